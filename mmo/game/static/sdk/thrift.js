/**
 * The subset of the Thrift binary protocol the client wire uses (docs/protocol.md 1.1):
 * bare structs (no message envelope), big-endian integers, length-prefixed strings and
 * binaries, lists, sets and maps, with the decode limits of section 1.3.
 *
 * Written by hand rather than with the `thrift` npm package: this is all a client needs,
 * it has no dependency, and it runs unchanged in browsers and in Node.
 */
import { WireError } from "./errors.js";
/** Thrift type ids (TType). */
export const TType = {
    STOP: 0,
    VOID: 1,
    BOOL: 2,
    BYTE: 3,
    DOUBLE: 4,
    I16: 6,
    I32: 8,
    I64: 10,
    STRING: 11,
    STRUCT: 12,
    MAP: 13,
    SET: 14,
    LIST: 15,
};
/** The limits of docs/protocol.md 1.3: 16 MiB strings, 1 048 576 elements, 64 structs deep. */
export const DEFAULT_LIMITS = Object.freeze({
    maxString: 16 * 1024 * 1024,
    maxContainer: 1024 * 1024,
    maxDepth: 64,
});
const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const INT32_MIN = -(2 ** 31);
const INT32_MAX = 2 ** 31 - 1;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
/** Writes binary-protocol items into a growing buffer. */
export class ThriftWriter {
    maxDepth;
    buf;
    view;
    pos = 0;
    /** Structs currently open (for the nesting limit). */
    depth = 0;
    constructor(initialSize = 256, maxDepth = DEFAULT_LIMITS.maxDepth) {
        this.maxDepth = maxDepth;
        this.buf = new Uint8Array(initialSize);
        this.view = new DataView(this.buf.buffer);
    }
    /** The bytes written so far (a copy). */
    finish() {
        return this.buf.slice(0, this.pos);
    }
    reserve(n) {
        const need = this.pos + n;
        if (need <= this.buf.length)
            return;
        let size = this.buf.length * 2;
        while (size < need)
            size *= 2;
        const grown = new Uint8Array(size);
        grown.set(this.buf.subarray(0, this.pos));
        this.buf = grown;
        this.view = new DataView(grown.buffer);
    }
    /** Enter a nested struct; a WireError past the nesting limit. */
    enterStruct() {
        if (++this.depth > this.maxDepth) {
            throw new WireError(`nested too deeply: more than ${this.maxDepth} structs`);
        }
    }
    exitStruct() {
        this.depth--;
    }
    byte(v) {
        this.reserve(1);
        this.view.setInt8(this.pos, v);
        this.pos += 1;
    }
    bool(v) {
        this.byte(v ? 1 : 0);
    }
    i16(v) {
        this.reserve(2);
        this.view.setInt16(this.pos, v);
        this.pos += 2;
    }
    i32(v) {
        if (!Number.isInteger(v) || v < INT32_MIN || v > INT32_MAX) {
            throw new WireError(`${v} is not a 32-bit integer`);
        }
        this.reserve(4);
        this.view.setInt32(this.pos, v);
        this.pos += 4;
    }
    i64(v) {
        let big;
        if (typeof v === "bigint") {
            big = v;
        }
        else {
            if (!Number.isSafeInteger(v))
                throw new WireError(`${v} is not a safe 64-bit integer`);
            big = BigInt(v);
        }
        if (big < INT64_MIN || big > INT64_MAX) {
            throw new WireError(`integer ${big} does not fit in 64 bits`);
        }
        this.reserve(8);
        this.view.setBigInt64(this.pos, big);
        this.pos += 8;
    }
    double(v) {
        this.reserve(8);
        this.view.setFloat64(this.pos, v);
        this.pos += 8;
    }
    binary(v) {
        this.i32(v.length);
        this.reserve(v.length);
        this.buf.set(v, this.pos);
        this.pos += v.length;
    }
    string(v) {
        this.binary(encoder.encode(v));
    }
    fieldBegin(type, id) {
        this.byte(type);
        this.i16(id);
    }
    /** End of a struct. */
    stop() {
        this.byte(TType.STOP);
    }
    listBegin(elementType, count) {
        this.byte(elementType);
        this.i32(count);
    }
    mapBegin(keyType, valueType, count) {
        this.byte(keyType);
        this.byte(valueType);
        this.i32(count);
    }
}
/** Reads binary-protocol items, refusing input past its {@link Limits}. */
export class ThriftReader {
    data;
    view;
    pos = 0;
    /** Structs currently open (for the nesting limit). */
    depth = 0;
    limits;
    constructor(data, limits = {}) {
        this.data = data;
        this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
        this.limits = { ...DEFAULT_LIMITS, ...limits };
    }
    /** Bytes not read yet. */
    get remaining() {
        return this.data.length - this.pos;
    }
    need(n) {
        if (this.pos + n > this.data.length) {
            throw new WireError(`truncated: ${n} more bytes needed at offset ${this.pos}`);
        }
    }
    /** Enter a nested struct; a WireError past the nesting limit. */
    enterStruct() {
        if (++this.depth > this.limits.maxDepth) {
            throw new WireError(`nested too deeply: more than ${this.limits.maxDepth} structs`);
        }
    }
    exitStruct() {
        this.depth--;
    }
    byte() {
        this.need(1);
        return this.view.getInt8(this.pos++);
    }
    /** A bool: true only for the byte 1, as the Python reader does. */
    bool() {
        this.need(1);
        return this.view.getUint8(this.pos++) === 1;
    }
    i16() {
        this.need(2);
        const v = this.view.getInt16(this.pos);
        this.pos += 2;
        return v;
    }
    i32() {
        this.need(4);
        const v = this.view.getInt32(this.pos);
        this.pos += 4;
        return v;
    }
    i64() {
        this.need(8);
        const v = this.view.getBigInt64(this.pos);
        this.pos += 8;
        return v;
    }
    double() {
        this.need(8);
        const v = this.view.getFloat64(this.pos);
        this.pos += 8;
        return v;
    }
    /** A `binary`: a view into the input (copy it to keep it past the input's life). */
    binaryView() {
        const length = this.i32();
        if (length < 0)
            throw new WireError(`negative length: ${length}`);
        if (length > this.limits.maxString) {
            throw new WireError(`string of ${length} bytes is over the limit of ${this.limits.maxString}`);
        }
        this.need(length);
        const v = this.data.subarray(this.pos, this.pos + length);
        this.pos += length;
        return v;
    }
    /** A `binary`, copied into a plain `Uint8Array` (also when the input is a Node `Buffer`). */
    binary() {
        return new Uint8Array(this.binaryView());
    }
    /** A `string`: UTF-8, invalid sequences replaced with U+FFFD (as the Python reader). */
    string() {
        return decoder.decode(this.binaryView());
    }
    /** A field header: its type (STOP ends the struct; then `id` is 0) and id. */
    fieldBegin() {
        const type = this.byte();
        if (type === TType.STOP)
            return { type, id: 0 };
        return { type, id: this.i16() };
    }
    count() {
        const n = this.i32();
        if (n < 0)
            throw new WireError(`negative container size: ${n}`);
        if (n > this.limits.maxContainer) {
            throw new WireError(`container of ${n} elements is over the limit of ${this.limits.maxContainer}`);
        }
        return n;
    }
    listBegin() {
        const elementType = this.byte();
        return { elementType, count: this.count() };
    }
    mapBegin() {
        const keyType = this.byte();
        const valueType = this.byte();
        return { keyType, valueType, count: this.count() };
    }
    /** Skip one item of `type` (an unknown field), within the same limits. */
    skip(type) {
        switch (type) {
            case TType.BOOL:
            case TType.BYTE:
                this.need(1);
                this.pos += 1;
                return;
            case TType.I16:
                this.need(2);
                this.pos += 2;
                return;
            case TType.I32:
                this.need(4);
                this.pos += 4;
                return;
            case TType.I64:
            case TType.DOUBLE:
                this.need(8);
                this.pos += 8;
                return;
            case TType.STRING:
                this.binaryView();
                return;
            case TType.STRUCT:
                this.enterStruct();
                for (;;) {
                    const field = this.fieldBegin();
                    if (field.type === TType.STOP)
                        break;
                    this.skip(field.type);
                }
                this.exitStruct();
                return;
            case TType.LIST:
            case TType.SET: {
                const { elementType, count } = this.listBegin();
                for (let i = 0; i < count; i++)
                    this.skip(elementType);
                return;
            }
            case TType.MAP: {
                const { keyType, valueType, count } = this.mapBegin();
                for (let i = 0; i < count; i++) {
                    this.skip(keyType);
                    this.skip(valueType);
                }
                return;
            }
            default:
                throw new WireError(`unknown type id ${type} at offset ${this.pos}`);
        }
    }
}
