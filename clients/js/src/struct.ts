/**
 * Thrift structs described by a small schema, encoded with the binary protocol as bare
 * structs (docs/protocol.md 1.1). The SDK's own `Packet` is one; a game whose service
 * declares a struct body (docs/protocol.md 5.5, "Declared: a Thrift struct") describes it
 * the same way:
 *
 * ```ts
 * const Move = defineStruct<{ x: number; y: number }>("Move", [
 *   { id: 1, name: "x", type: "i32", required: true },
 *   { id: 2, name: "y", type: "i32", required: true },
 * ]);
 * await client.request("fight.move", { x: 1, y: 2 }, { encode: Move.encode, decode: Move.decode });
 * ```
 */

import { WireError } from "./errors.js";
import { DEFAULT_LIMITS, ThriftReader, ThriftWriter, TType } from "./thrift.js";
import { type DecodeOptions, readValue, writeValue } from "./value.js";

/**
 * A field's Thrift type. Enums are `"i32"`; `"value"` is the dynamic `Value` union
 * (any {@link WireValue}). Lists and sets decode as arrays; maps with string keys as plain
 * objects (or `Map`s with `{ maps: "map" }`), other maps as `Map`s.
 */
export type FieldType =
  | "bool"
  | "byte"
  | "i16"
  | "i32"
  | "i64"
  | "double"
  | "string"
  | "binary"
  | "value"
  | { readonly list: FieldType }
  | { readonly set: FieldType }
  | { readonly map: readonly [FieldType, FieldType] }
  | { readonly struct: StructCodec<any> };

/** One field of a struct. */
export interface FieldSpec {
  readonly id: number;
  readonly name: string;
  readonly type: FieldType;
  /** Encoding refuses an object without it (decoding does not check: docs/protocol.md 1.1). */
  readonly required?: boolean;
}

/** Encodes and decodes one struct type. `encode` and `decode` are bound: pass them around. */
export interface StructCodec<T> {
  readonly name: string;
  readonly fields: readonly FieldSpec[];
  /** The struct as bytes (fields in id order, unset ones left out). */
  readonly encode: (value: T) => Uint8Array;
  /** The struct read from bytes (unknown fields skipped, bytes after the STOP ignored). */
  readonly decode: (data: Uint8Array, opts?: DecodeOptions) => T;
  /** Write it into a writer (inside another struct). */
  write(w: ThriftWriter, value: T): void;
  /** Read it from a reader (inside another struct). */
  read(r: ThriftReader, opts?: DecodeOptions): T;
}

/** The Thrift type id of a field type. */
export function ttypeOf(type: FieldType): number {
  if (typeof type === "string") {
    switch (type) {
      case "bool":
        return TType.BOOL;
      case "byte":
        return TType.BYTE;
      case "i16":
        return TType.I16;
      case "i32":
        return TType.I32;
      case "i64":
        return TType.I64;
      case "double":
        return TType.DOUBLE;
      case "string":
      case "binary":
        return TType.STRING;
      case "value":
        return TType.STRUCT;
    }
  }
  if ("list" in type) return TType.LIST;
  if ("set" in type) return TType.SET;
  if ("map" in type) return TType.MAP;
  return TType.STRUCT;
}

function describe(type: FieldType): string {
  return typeof type === "string" ? type : JSON.stringify(type, (_k, v) => (v?.name && v.fields ? v.name : v));
}

function writeItem(w: ThriftWriter, type: FieldType, v: unknown, where: string): void {
  if (typeof type === "string") {
    switch (type) {
      case "bool":
        if (typeof v !== "boolean") break;
        w.bool(v);
        return;
      case "byte":
        if (typeof v !== "number" || !Number.isInteger(v) || v < -128 || v > 127) break;
        w.byte(v);
        return;
      case "i16":
        if (typeof v !== "number" || !Number.isInteger(v) || v < -32768 || v > 32767) break;
        w.i16(v);
        return;
      case "i32":
        if (typeof v !== "number") break;
        w.i32(v);
        return;
      case "i64":
        if (typeof v !== "number" && typeof v !== "bigint") break;
        w.i64(v);
        return;
      case "double":
        if (typeof v !== "number") break;
        w.double(v);
        return;
      case "string":
        if (typeof v !== "string") break;
        w.string(v);
        return;
      case "binary":
        if (v instanceof Uint8Array) {
          w.binary(v);
          return;
        }
        if (typeof v === "string") {
          w.string(v);
          return;
        }
        break;
      case "value":
        writeValue(w, v);
        return;
    }
    throw new WireError(`${where}: expected ${type}, got ${v === null ? "null" : typeof v}`);
  }
  if ("list" in type || "set" in type) {
    const element = "list" in type ? type.list : type.set;
    const items = v instanceof Set ? [...v] : v;
    if (!Array.isArray(items)) throw new WireError(`${where}: expected an array`);
    w.listBegin(ttypeOf(element), items.length);
    for (const item of items) writeItem(w, element, item, where);
    return;
  }
  if ("map" in type) {
    const [keyType, valueType] = type.map;
    let entries: [unknown, unknown][];
    if (v instanceof Map) entries = [...v.entries()];
    else if (v !== null && typeof v === "object") {
      const numeric = ttypeOf(keyType) !== TType.STRING;
      entries = Object.entries(v).map(([k, item]) => [numeric ? Number(k) : k, item]);
    } else throw new WireError(`${where}: expected a Map or an object`);
    w.mapBegin(ttypeOf(keyType), ttypeOf(valueType), entries.length);
    for (const [key, item] of entries) {
      writeItem(w, keyType, key, where);
      writeItem(w, valueType, item, where);
    }
    return;
  }
  if (v === null || typeof v !== "object") throw new WireError(`${where}: expected a ${type.struct.name}`);
  type.struct.write(w, v);
}

function setKey(obj: Record<string, unknown>, key: string, value: unknown): void {
  if (key === "__proto__") {
    Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
  } else {
    obj[key] = value;
  }
}

function int64(v: bigint, opts: DecodeOptions): number | bigint {
  const mode = opts.int64 ?? "auto";
  if (mode === "bigint") return v;
  if (mode === "number") return Number(v);
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

function readItem(r: ThriftReader, type: FieldType, opts: DecodeOptions): unknown {
  if (typeof type === "string") {
    switch (type) {
      case "bool":
        return r.bool();
      case "byte":
        return r.byte();
      case "i16":
        return r.i16();
      case "i32":
        return r.i32();
      case "i64":
        return int64(r.i64(), opts);
      case "double":
        return r.double();
      case "string":
        return r.string();
      case "binary":
        return r.binary();
      case "value":
        return readValue(r, opts);
    }
  }
  if ("list" in type || "set" in type) {
    const element = "list" in type ? type.list : type.set;
    const { elementType, count } = r.listBegin();
    if (count > 0 && elementType !== ttypeOf(element)) {
      throw new WireError(`list of type ${elementType}, expected ${describe(element)}`);
    }
    const items: unknown[] = [];
    for (let i = 0; i < count; i++) items.push(readItem(r, element, opts));
    return items;
  }
  if ("map" in type) {
    const [keyType, valueType] = type.map;
    const { keyType: kt, valueType: vt, count } = r.mapBegin();
    if (count > 0 && (kt !== ttypeOf(keyType) || vt !== ttypeOf(valueType))) {
      throw new WireError(`map of types ${kt}/${vt}, expected ${describe(keyType)}/${describe(valueType)}`);
    }
    if (ttypeOf(keyType) === TType.STRING && keyType !== "binary" && opts.maps !== "map") {
      const obj: Record<string, unknown> = {};
      for (let i = 0; i < count; i++) {
        const key = r.string();
        setKey(obj, key, readItem(r, valueType, opts));
      }
      return obj;
    }
    const map = new Map<unknown, unknown>();
    for (let i = 0; i < count; i++) {
      const key = readItem(r, keyType, opts);
      map.set(key, readItem(r, valueType, opts));
    }
    return map;
  }
  return type.struct.read(r, opts);
}

/** Describe a struct type by its fields; see the module's example. */
export function defineStruct<T extends object>(name: string, fields: readonly FieldSpec[]): StructCodec<T> {
  const sorted = [...fields].sort((a, b) => a.id - b.id);
  const byId = new Map<number, { spec: FieldSpec; ttype: number }>();
  for (const spec of sorted) {
    if (!Number.isInteger(spec.id) || spec.id < -32768 || spec.id > 32767) {
      throw new Error(`${name}.${spec.name}: field id ${spec.id} is not an i16`);
    }
    if (byId.has(spec.id)) throw new Error(`${name}: two fields have id ${spec.id}`);
    byId.set(spec.id, { spec, ttype: ttypeOf(spec.type) });
  }

  const codec: StructCodec<T> = {
    name,
    fields: sorted,
    write(w: ThriftWriter, value: T): void {
      w.enterStruct();
      const obj = value as Record<string, unknown>;
      for (const spec of sorted) {
        const v = obj[spec.name];
        if (v === undefined || v === null) {
          if (spec.required) throw new WireError(`${name}.${spec.name} is required`);
          continue;
        }
        w.fieldBegin(byId.get(spec.id)!.ttype, spec.id);
        writeItem(w, spec.type, v, `${name}.${spec.name}`);
      }
      w.stop();
      w.exitStruct();
    },
    read(r: ThriftReader, opts: DecodeOptions = {}): T {
      r.enterStruct();
      const obj: Record<string, unknown> = {};
      for (;;) {
        const { type, id } = r.fieldBegin();
        if (type === TType.STOP) break;
        const field = byId.get(id);
        if (field === undefined || field.ttype !== type) {
          r.skip(type); // unknown field, or not of its declared type: skipped as Python does
          continue;
        }
        setKey(obj, field.spec.name, readItem(r, field.spec.type, opts));
      }
      r.exitStruct();
      return obj as T;
    },
    encode: (value: T): Uint8Array => {
      const w = new ThriftWriter(64, DEFAULT_LIMITS.maxDepth);
      codec.write(w, value);
      return w.finish();
    },
    decode: (data: Uint8Array, opts: DecodeOptions = {}): T => codec.read(new ThriftReader(data, opts.limits), opts),
  };
  return Object.freeze(codec);
}
