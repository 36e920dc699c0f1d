/*
 * mmo wire: the Thrift types that travel between mmo processes (over ZeroMQ).
 *
 * Generated Python code lives in mmo/wire/gen/ and is committed;
 * regenerate it with scripts/gen-thrift after changing this file.
 * Every struct is encoded with TBinaryProtocol. docs/protocol.md describes the frames.
 */

namespace py mmo.wire.gen.mmo

/* A generic dynamic value, so that a service works with no IDL of its own.
 * Exactly one field is set. null_value is set (to true) for a null. */
union Value {
  1: bool null_value
  2: bool bool_value
  3: i64 int_value
  4: double double_value
  5: string string_value
  6: binary bytes_value
  7: list<Value> list_value
  8: map<string, Value> map_value
}

/* Kinds of logic-layer messages between processes. */
enum Kind {
  REQUEST = 1,   // caller -> worker ROUTER; answered by REPLY or ERROR
  REPLY = 2,     // worker -> caller; body is the result
  ERROR = 3,     // worker -> caller; header carries error_code, error_type, error_message
  PUSH = 4,      // caller -> worker PULL; one-way, never answered
  EVENT = 5,     // worker PUB -> subscribers; topic is the first frame
}

/* Why a call failed. */
enum ErrorCode {
  REMOTE = 1,          // the handler raised; error_type and error_message say what
  UNKNOWN_METHOD = 2,  // the service has no such method
  NO_INSTANCE = 3,     // no live instance of the service
  DEADLINE = 4,        // the deadline passed
  BAD_REQUEST = 5,     // the frames could not be decoded
  INSTANCE_LOST = 6,   // the instance died with a non-idempotent call in flight
  UNAVAILABLE = 7,     // the instance is stopping and did not run the call: send it elsewhere
  FORBIDDEN = 8,       // the method exists but this caller may not call it (its role)
}

/* On whose behalf a REQUEST is made: what the callee lets it reach. */
enum Origin {
  MEMBER = 1,   // a cluster member's own call (the default when unset): any method
  CLIENT = 2,   // a logged-in player's packet, forwarded by a broker: client methods only
  LOGIN = 3,    // a player's packet before login (the broker's login and anonymous routes):
                // login methods only
}

/* A client session, as it travels with each request (set by brokers). */
struct Session {
  1: required string id
  2: optional string user_id
  3: optional string broker
  4: optional map<string, Value> props
}

/* The first frame of every logic-layer message (after ZeroMQ routing frames).
 * The second frame is the body: a Value (kwargs map for a REQUEST/PUSH,
 * the result for a REPLY, the payload of an EVENT), empty for an ERROR. */
struct Header {
  1: required Kind kind
  2: optional i64 call_id
  3: optional string service_name
  4: optional string method
  5: optional i32 timeout_ms       // remaining budget when sent; the receiver derives its deadline
  6: optional string caller        // instance id (or process name) of the caller
  7: optional Session session
  8: optional ErrorCode error_code
  9: optional string error_type
  10: optional string error_message
  11: optional string topic
  12: optional bool one_way         // REQUEST: answer nothing (client notifies, pushes to brokers)
  13: optional list<string> targets // broker methods: the session ids concerned
  14: optional string channel       // broker methods: a channel ("*": every session)
  15: optional string route         // broker push/broadcast: the client route of the push
  16: optional string instance_id   // broker bind: the instance a session's prefix is bound to
  17: optional i32 client_seq       // REQUEST from a broker: the client packet's seq; with session,
                                    // a resend of (session, seq) is answered from the worker's memo
  18: optional string caller_role   // the calling process's role: broker, worker, fight, tool, ...
  19: optional Origin origin        // REQUEST: on whose behalf (unset: MEMBER)
  20: optional string peer          // origin CLIENT/LOGIN: the player's address (host), set by brokers
  21: optional string trace_id      // the client request this message serves (born at the broker,
                                    // or the client's Packet.trace); carried by nested calls,
                                    // pushes and broadcasts
  22: optional bool traced          // with trace_id: every hop records a span (mmo trace ID)
  23: optional string broker        // a broker operation relayed by a bridge (docs/bridge.md):
                                    // the broker, in the cluster that receives it, it is for
}

/* ---- registry (yellow) ---- */

/* One live instance of a service, as registered in yellow. */
struct Instance {
  1: required string service_name
  2: required string instance_id
  3: optional map<string, string> endpoints   // e.g. {"rep": "tcp://127.0.0.1:5501"}
  4: optional map<string, Value> meta         // load, capacity, stateful, methods, pid, ...
  5: optional i32 ttl_ms                      // the entry expires this long after the last heartbeat
}

enum RegistryOp {
  REGISTER = 1,    // provider -> yellow: register or heartbeat (full record, upsert)
  DEREGISTER = 2,  // provider -> yellow: graceful goodbye
  QUERY = 3,       // consumer -> yellow: live instances (of service, or all when unset)
  WATCH = 4,       // consumer -> yellow: start or renew a watch (a lease)
  ACK = 5,         // yellow -> any: request done; carries yellow_id and seq
  SNAPSHOT = 6,    // yellow -> watcher / querier: instances and the seq they are current at
  UPDATE = 7,      // yellow -> watcher: one change, seq = previous seq + 1
  UNWATCH = 8,     // consumer -> yellow: stop a watch
}

enum Change {
  UP = 1,          // new or changed instance
  DOWN = 2,        // instance gone (reason: deregistered / expired)
}

struct RegistryMessage {
  1: required RegistryOp op
  2: optional i64 request_id
  3: optional Instance instance
  4: optional string service_name
  5: optional list<Instance> instances
  6: optional i64 seq
  7: optional string yellow_id       // changes when a yellow restarts
  8: optional Change change
  9: optional string reason
  10: optional string instance_id
  11: optional i64 uptime_ms         // how long the yellow has run (in SNAPSHOT): a young one may
                                     // not have heard every provider's heartbeat yet
}

/* ---- client wire (game client <-> broker) ---- */

/* Kinds of packets between a game client and a broker. */
enum PacketKind {
  REQUEST = 1,     // client -> broker: answered by a RESPONSE or an ERROR with the same seq
  NOTIFY = 2,      // client -> broker: one-way, never answered (unless it is refused: ERROR)
  RESPONSE = 3,    // broker -> client: the reply to the REQUEST with this seq
  PUSH = 4,        // broker -> client: a message from logic (route, body)
  ERROR = 5,       // broker -> client: a REQUEST/NOTIFY (seq) or the connection failed: code, message
  HEARTBEAT = 6,   // both ways: keeps the connection alive; the broker answers each one
  KICK = 7,        // broker -> client: the session is ended (code, message); the broker closes
}

/* Why a client packet or connection failed (Packet.code of ERROR and KICK). */
enum ClientError {
  BAD_PACKET = 1,       // undecodable packet or frame (connection closed)
  TOO_LARGE = 2,        // frame over the broker's limit (connection closed)
  NOT_LOGGED_IN = 3,    // anything but login/resume before logging in (connection closed)
  UNKNOWN_ROUTE = 4,    // no service serves this route (connection stays open)
  RATE_LIMITED = 5,     // over the per-session message rate (packet dropped; a flood closes)
  LOGIN_FAILED = 6,     // the auth service refused the login (connection stays open)
  LOGIN_TIMEOUT = 7,    // no login within the limit (connection closed)
  RESUME_FAILED = 8,    // unknown/expired session or wrong token (connection stays open)
  SERVICE_ERROR = 9,    // the service raised: message is "Type: message"
  UNAVAILABLE = 10,     // no live instance of the service
  TIMEOUT = 11,         // the service did not answer in time
  IDLE = 12,            // no packet within the idle timeout (connection closed)
  KICKED = 13,          // logic ended the session
  SLOW_CONSUMER = 14,   // the client did not read its pushes (connection closed)
  SHUTDOWN = 15,        // the broker is stopping; reconnect and resume elsewhere
  REPLACED = 16,        // the session was resumed on another connection
  BAD_REQUEST = 17,     // the service refused the arguments
}

/* One client packet; framed over TCP by a 4-byte big-endian length, or one per
 * binary WebSocket message. The broker never decodes the body of a packet it forwards. */
struct Packet {
  1: required PacketKind kind
  2: optional i32 seq          // REQUEST: chosen by the client (> 0), echoed by RESPONSE/ERROR
  3: optional string route     // REQUEST, NOTIFY, PUSH: "service.method", e.g. "chat.send"
  4: optional binary body      // a binary-protocol Value (or the route's own struct)
  5: optional i32 code         // ERROR, KICK: a ClientError
  6: optional string message   // ERROR, KICK: what happened, for people
  7: optional string trace     // REQUEST, NOTIFY: the client's own trace id (1-64 of [0-9A-Za-z_-]);
                               // the request is then traced at every hop (docs/operations.md)
}
