/**
 * `Packet`, the unit of the client wire (docs/protocol.md 5.3), and its TCP framing (5.2):
 * a 4-byte big-endian length, then the packet. Over WebSocket each binary message is one
 * packet, without the length.
 */
import { WireError } from "./errors.js";
import { defineStruct } from "./struct.js";
/** `PacketKind` (docs/protocol.md 5.4). */
export const PacketKind = {
    /** client -> broker: answered by one RESPONSE or one ERROR with the same seq. */
    REQUEST: 1,
    /** client -> broker: one-way (an ERROR without seq if refused). */
    NOTIFY: 2,
    /** broker -> client: the answer to the REQUEST with this seq. */
    RESPONSE: 3,
    /** broker -> client: a message from logic (route, body). */
    PUSH: 4,
    /** broker -> client: a request (seq) or the connection (no seq) failed: code, message. */
    ERROR: 5,
    /** both ways: the broker answers each one. */
    HEARTBEAT: 6,
    /** broker -> client: the session's connection is ended (code, message); the broker closes. */
    KICK: 7,
};
/** The `Packet` struct codec (field ids of mmo.thrift). */
export const PacketStruct = defineStruct("Packet", [
    { id: 1, name: "kind", type: "i32", required: true },
    { id: 2, name: "seq", type: "i32" },
    { id: 3, name: "route", type: "string" },
    { id: 4, name: "body", type: "binary" },
    { id: 5, name: "code", type: "i32" },
    { id: 6, name: "message", type: "string" },
    { id: 7, name: "trace", type: "string" },
]);
/** A packet's bytes (a bare struct, fields in id order: as the Python side writes them). */
export function encodePacket(packet) {
    return PacketStruct.encode(packet);
}
/** A packet from its bytes; a {@link WireError} if malformed. */
export function decodePacket(data, opts = {}) {
    return PacketStruct.decode(data, opts);
}
/** `data` with its 4-byte big-endian length in front: one TCP frame. */
export function frame(data) {
    const out = new Uint8Array(4 + data.length);
    new DataView(out.buffer).setUint32(0, data.length);
    out.set(data, 4);
    return out;
}
/** The default largest frame accepted from a broker: 16 MiB (the Python client's). */
export const MAX_INCOMING_FRAME = 16 * 1024 * 1024;
/**
 * Splits a TCP byte stream into frames: feed it what arrives, get every whole frame.
 * A length over `maxFrame` is a {@link WireError} (the stream can no longer be trusted).
 */
export class FrameDecoder {
    maxFrame;
    chunks = [];
    size = 0;
    expected = -1;
    constructor(maxFrame = MAX_INCOMING_FRAME) {
        this.maxFrame = maxFrame;
    }
    /** Bytes held, waiting for the rest of their frame. */
    get buffered() {
        return this.size;
    }
    /** Add `chunk`; return the frames it completes (their payloads, without the length). */
    push(chunk) {
        if (chunk.length > 0) {
            this.chunks.push(chunk);
            this.size += chunk.length;
        }
        const frames = [];
        for (;;) {
            if (this.expected < 0) {
                if (this.size < 4)
                    break;
                const head = this.take(4);
                const length = new DataView(head.buffer, head.byteOffset, 4).getUint32(0);
                if (length > this.maxFrame) {
                    throw new WireError(`frame of ${length} bytes from the broker is over ${this.maxFrame}`);
                }
                this.expected = length;
            }
            if (this.size < this.expected)
                break;
            frames.push(this.take(this.expected));
            this.expected = -1;
        }
        return frames;
    }
    take(n) {
        const first = this.chunks[0];
        if (n === 0)
            return new Uint8Array(0);
        if (first !== undefined && first.length >= n) {
            const out = first.subarray(0, n);
            if (first.length === n)
                this.chunks.shift();
            else
                this.chunks[0] = first.subarray(n);
            this.size -= n;
            return out;
        }
        const out = new Uint8Array(n);
        let filled = 0;
        while (filled < n) {
            const chunk = this.chunks[0];
            const part = Math.min(chunk.length, n - filled);
            out.set(chunk.subarray(0, part), filled);
            filled += part;
            if (part === chunk.length)
                this.chunks.shift();
            else
                this.chunks[0] = chunk.subarray(part);
        }
        this.size -= n;
        return out;
    }
}
