import protobuf from 'protobufjs';

/**
 * haul's typed protobuf messages hold 64-bit fields as bigint; protobufjs takes and gives them as
 * strings (with `longs: String`). These convert a plain message object between the two, walking the
 * schema, so a value above 2^53 survives a decode and re-encode exactly.
 */
const SIXTY_FOUR_BIT = new Set(['uint64', 'int64', 'sint64', 'fixed64', 'sfixed64']);

type Plain = Record<string, unknown>;

function mapSixtyFourBit(type: protobuf.Type, value: Plain, convert: (v: unknown) => unknown): Plain {
  const out: Plain = {};
  for (const [key, fieldValue] of Object.entries(value)) {
    const field = type.fields[key];
    if (field === undefined) continue;
    const one = (v: unknown): unknown =>
      field.resolvedType instanceof protobuf.Type
        ? mapSixtyFourBit(field.resolvedType, v as Plain, convert)
        : SIXTY_FOUR_BIT.has(field.type)
          ? convert(v)
          : v;
    out[key] = Array.isArray(fieldValue) ? fieldValue.map(one) : one(fieldValue);
  }
  return out;
}

/** For `type.fromObject`: bigint fields become decimal strings. */
export function bigintsToWire(type: protobuf.Type, message: object): Plain {
  return mapSixtyFourBit(type, message as Plain, (v) => (typeof v === 'bigint' ? v.toString() : v));
}

/** After `type.toObject(…, { longs: String })`: 64-bit fields become bigint. */
export function bigintsFromWire(type: protobuf.Type, plain: object): Plain {
  return mapSixtyFourBit(type, plain as Plain, (v) => BigInt(v as string));
}

/**
 * A message as a codec decodes it: the schema's generated type (scripts/generate-wire-types), with
 * bytes fields as the Buffers protobufjs gives.
 */
export type Decoded<T> = T extends Uint8Array
  ? Buffer
  : T extends bigint | string | number | boolean | undefined
    ? T
    : T extends readonly (infer E)[]
      ? Decoded<E>[]
      : { [K in keyof T]: Decoded<T[K]> };

/** Encodes and decodes one message type as haul's typed objects (64-bit fields as bigint). */
export interface MessageCodec<T> {
  encode(message: T): Buffer;
  decode(bytes: Buffer): Decoded<T>;
}

/** A codec for `type`; bytes that do not decode become the error `malformed` makes of the cause. */
export function messageCodec<T>(type: protobuf.Type, malformed: (cause: unknown) => Error): MessageCodec<T> {
  return {
    encode: (message) => Buffer.from(type.encode(type.fromObject(bigintsToWire(type, message as object))).finish()),
    decode: (bytes) => {
      try {
        return bigintsFromWire(type, type.toObject(type.decode(bytes), { longs: String, bytes: Buffer, defaults: true, arrays: true, oneofs: false })) as Decoded<T>;
      } catch (error) {
        throw malformed(error);
      }
    },
  };
}
