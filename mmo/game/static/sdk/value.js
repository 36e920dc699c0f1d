/**
 * `Value`: the dynamic data of bodies, results and pushes (docs/protocol.md 1.2), a Thrift
 * union of which exactly one field is set:
 *
 * | id | field          | JavaScript                                                   |
 * | -- | -------------- | ------------------------------------------------------------ |
 * | 1  | `null_value`   | `null` (and `undefined`)                                     |
 * | 2  | `bool_value`   | `boolean`                                                    |
 * | 3  | `int_value`    | a safe-integer `number`, or a `bigint` in [-2^63, 2^63-1]     |
 * | 4  | `double_value` | any other `number` (NaN, ±Infinity, -0 too), or `Double`    |
 * | 5  | `string_value` | `string`                                                     |
 * | 6  | `bytes_value`  | `Uint8Array` (also any ArrayBuffer view, or an ArrayBuffer)  |
 * | 7  | `list_value`   | an array                                                     |
 * | 8  | `map_value`    | a plain object, or a `Map` whose keys are all strings        |
 */
import { WireError } from "./errors.js";
import { DEFAULT_LIMITS, ThriftReader, ThriftWriter, TType } from "./thrift.js";
/**
 * A number to send as `double_value` even when it is an integer (`new Double(10)` is sent
 * as `10.0`; a bare `10` is sent as `int_value`). Decoding with `{ doubles: "wrap" }`
 * yields these, so that values re-encode to the same bytes.
 */
export class Double {
    value;
    constructor(value) {
        this.value = value;
    }
    valueOf() {
        return this.value;
    }
    toJSON() {
        return this.value;
    }
}
/** `new Double(value)`: send `value` as a Thrift `double`. */
export function double(value) {
    return new Double(value);
}
const SAFE_MIN = BigInt(Number.MIN_SAFE_INTEGER);
const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);
function isPlainObject(v) {
    const proto = Object.getPrototypeOf(v);
    return proto === Object.prototype || proto === null;
}
function typeName(v) {
    if (v === null)
        return "null";
    if (typeof v !== "object")
        return typeof v;
    return v.constructor?.name ?? "object";
}
/** Write `v` as one `Value` struct. */
export function writeValue(w, v) {
    w.enterStruct();
    if (v === null || v === undefined) {
        w.fieldBegin(TType.BOOL, 1);
        w.bool(true);
    }
    else if (typeof v === "boolean") {
        w.fieldBegin(TType.BOOL, 2);
        w.bool(v);
    }
    else if (typeof v === "number") {
        if (Number.isSafeInteger(v) && !Object.is(v, -0)) {
            w.fieldBegin(TType.I64, 3);
            w.i64(v);
        }
        else {
            w.fieldBegin(TType.DOUBLE, 4);
            w.double(v);
        }
    }
    else if (typeof v === "bigint") {
        w.fieldBegin(TType.I64, 3);
        w.i64(v);
    }
    else if (typeof v === "string") {
        w.fieldBegin(TType.STRING, 5);
        w.string(v);
    }
    else if (typeof v === "object") {
        if (v instanceof Double) {
            w.fieldBegin(TType.DOUBLE, 4);
            w.double(v.value);
        }
        else if (v instanceof Uint8Array) {
            w.fieldBegin(TType.STRING, 6);
            w.binary(v);
        }
        else if (ArrayBuffer.isView(v)) {
            w.fieldBegin(TType.STRING, 6);
            w.binary(new Uint8Array(v.buffer, v.byteOffset, v.byteLength));
        }
        else if (v instanceof ArrayBuffer) {
            w.fieldBegin(TType.STRING, 6);
            w.binary(new Uint8Array(v));
        }
        else if (Array.isArray(v)) {
            w.fieldBegin(TType.LIST, 7);
            w.listBegin(TType.STRUCT, v.length);
            for (const item of v)
                writeValue(w, item);
        }
        else if (v instanceof Map) {
            for (const key of v.keys()) {
                if (typeof key !== "string")
                    throw new WireError(`map keys must be strings, not ${typeName(key)}`);
            }
            w.fieldBegin(TType.MAP, 8);
            w.mapBegin(TType.STRING, TType.STRUCT, v.size);
            for (const [key, item] of v) {
                w.string(key);
                writeValue(w, item);
            }
        }
        else if (isPlainObject(v)) {
            const entries = Object.entries(v).filter(([, item]) => item !== undefined);
            w.fieldBegin(TType.MAP, 8);
            w.mapBegin(TType.STRING, TType.STRUCT, entries.length);
            for (const [key, item] of entries) {
                w.string(key);
                writeValue(w, item);
            }
        }
        else {
            throw new WireError(`cannot encode a ${typeName(v)}`);
        }
    }
    else {
        throw new WireError(`cannot encode a ${typeof v}`);
    }
    w.stop();
    w.exitStruct();
}
function setKey(obj, key, value) {
    if (key === "__proto__") {
        Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
    }
    else {
        obj[key] = value;
    }
}
/** Read one `Value` struct. */
export function readValue(r, opts = {}) {
    r.enterStruct();
    // Every field read; the first present in Python's order wins (docs/protocol.md 1.2).
    let hasNull = false;
    let hasBool = false;
    let boolValue = false;
    let intValue;
    let doubleValue;
    let stringValue;
    let bytesValue;
    let listValue;
    let mapValue;
    for (;;) {
        const { type, id } = r.fieldBegin();
        if (type === TType.STOP)
            break;
        if (id === 1 && type === TType.BOOL) {
            r.bool();
            hasNull = true; // set to false still decodes as null
        }
        else if (id === 2 && type === TType.BOOL) {
            boolValue = r.bool();
            hasBool = true;
        }
        else if (id === 3 && type === TType.I64) {
            intValue = r.i64();
        }
        else if (id === 4 && type === TType.DOUBLE) {
            doubleValue = r.double();
        }
        else if (id === 5 && type === TType.STRING) {
            stringValue = r.string();
        }
        else if (id === 6 && type === TType.STRING) {
            bytesValue = r.binary();
        }
        else if (id === 7 && type === TType.LIST) {
            const { elementType, count } = r.listBegin();
            if (count > 0 && elementType !== TType.STRUCT) {
                throw new WireError(`list_value of type ${elementType}, not struct`);
            }
            listValue = [];
            for (let i = 0; i < count; i++)
                listValue.push(readValue(r, opts));
        }
        else if (id === 8 && type === TType.MAP) {
            const { keyType, valueType, count } = r.mapBegin();
            if (count > 0 && (keyType !== TType.STRING || valueType !== TType.STRUCT)) {
                throw new WireError(`map_value of types ${keyType}/${valueType}, not string/struct`);
            }
            if (opts.maps === "map") {
                const map = new Map();
                for (let i = 0; i < count; i++) {
                    const key = r.string();
                    map.set(key, readValue(r, opts));
                }
                mapValue = map;
            }
            else {
                const obj = {};
                for (let i = 0; i < count; i++) {
                    const key = r.string();
                    setKey(obj, key, readValue(r, opts));
                }
                mapValue = obj;
            }
        }
        else {
            r.skip(type);
        }
    }
    r.exitStruct();
    if (stringValue !== undefined)
        return stringValue;
    if (intValue !== undefined) {
        const mode = opts.int64 ?? "auto";
        if (mode === "bigint")
            return intValue;
        if (mode === "number")
            return Number(intValue);
        return intValue >= SAFE_MIN && intValue <= SAFE_MAX ? Number(intValue) : intValue;
    }
    if (mapValue !== undefined)
        return mapValue;
    if (listValue !== undefined)
        return listValue;
    if (hasBool)
        return boolValue;
    if (doubleValue !== undefined)
        return opts.doubles === "wrap" ? new Double(doubleValue) : doubleValue;
    if (bytesValue !== undefined)
        return bytesValue;
    if (hasNull)
        return null;
    throw new WireError("empty Value: no field is set");
}
/** Encode a JavaScript value as a binary-protocol `Value`; a {@link WireError} if it cannot be. */
export function encodeValue(value, opts = {}) {
    const w = new ThriftWriter(128, opts.maxDepth ?? DEFAULT_LIMITS.maxDepth);
    writeValue(w, value);
    return w.finish();
}
/** Decode a binary-protocol `Value`; a {@link WireError} if malformed or over a limit. */
export function decodeValue(data, opts = {}) {
    return readValue(new ThriftReader(data, opts.limits), opts);
}
