/**
 * mmo-client: the JavaScript/TypeScript game-client SDK of mmo (browsers and Node >= 20).
 * docs/protocol.md section 5 describes the wire; README.md the API.
 */
export { Client, FINAL_KICKS, } from "./client.js";
export { ANY_ROUTE, BrokerConnection, DEFAULT_HEARTBEAT, DEFAULT_TIMEOUT, Listeners, MAX_SEQ, decodeBody, encodeBody, } from "./connection.js";
export { SCHEMES, brokerUrl, brokersFor, fetchBrokerList, httpFetcher, joinAddress, parseBrokerList, pickBroker, rankBrokers, splitAddress, splitUrl, } from "./brokerlist.js";
export { connector, tcpConnector, webSocketConnector, } from "./transports.js";
export { BadPacketError, BadRequestError, BrokerError, ClientError, ClientTimeoutError, ConnectError, DisconnectedError, ERROR_CLASSES, IdleError, KickedError, LoginFailedError, LoginTimeoutError, MmoError, NotLoggedInError, RateLimitedError, ReplacedError, ResumeFailedError, ServiceError, ServiceTimeoutError, ShutdownError, SlowConsumerError, TooLargeError, UnavailableError, UnknownRouteError, WireError, brokerError, errorName, } from "./errors.js";
export { FrameDecoder, MAX_INCOMING_FRAME, PacketKind, PacketStruct, decodePacket, encodePacket, frame, } from "./packet.js";
export { Double, decodeValue, double, encodeValue, readValue, writeValue, } from "./value.js";
export { defineStruct, ttypeOf } from "./struct.js";
export { DEFAULT_LIMITS, ThriftReader, ThriftWriter, TType } from "./thrift.js";
export { MAX_DELAY, consoleLogger, silentLogger, systemClock } from "./clock.js";
