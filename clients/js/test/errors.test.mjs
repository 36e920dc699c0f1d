// Error classes and enums: one class per ClientError code, the codes and kinds of mmo.thrift.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  BadRequestError,
  BrokerError,
  ClientError,
  ClientTimeoutError,
  ConnectError,
  DisconnectedError,
  ERROR_CLASSES,
  KickedError,
  LoginFailedError,
  MmoError,
  PacketKind,
  ServiceError,
  ServiceTimeoutError,
  UnknownRouteError,
  WireError,
  brokerError,
  errorName,
} from "../dist/index.js";
import { fixture } from "./helpers.mjs";

test("PacketKind and ClientError are mmo.thrift's", () => {
  const enums = fixture("enums");
  assert.deepEqual({ ...PacketKind }, enums.PacketKind);
  assert.deepEqual({ ...ClientError }, enums.ClientError);
});

test("every ClientError code has its own BrokerError subclass", () => {
  const seen = new Set();
  for (const [name, code] of Object.entries(ClientError)) {
    const error = brokerError(code, "what happened");
    assert.ok(error instanceof BrokerError && error instanceof MmoError && error instanceof Error, name);
    assert.equal(error.constructor, ERROR_CLASSES[code]);
    assert.notEqual(error.constructor, BrokerError);
    assert.equal(error.code, code);
    assert.equal(error.codeName, name);
    assert.equal(error.detail, "what happened");
    assert.equal(error.message, `${name}: what happened`);
    assert.equal(error.name, error.constructor.name);
    seen.add(error.constructor);
  }
  assert.equal(seen.size, Object.keys(ClientError).length);
});

test("a code this SDK does not know is a plain BrokerError", () => {
  const error = brokerError(99, "new");
  assert.equal(error.constructor, BrokerError);
  assert.equal(error.codeName, "CODE_99");
  assert.equal(error.message, "CODE_99: new");
  assert.equal(errorName(undefined), "NO_CODE");
  assert.equal(errorName(4), "UNKNOWN_ROUTE");
  assert.equal(brokerError(4).message, "UNKNOWN_ROUTE");
});

test("service and login errors split their Type: message", () => {
  const service = brokerError(ClientError.SERVICE_ERROR, "AccountExists: user 'harry' already exists");
  assert.ok(service instanceof ServiceError);
  assert.equal(service.errorType, "AccountExists");
  assert.equal(service.errorMessage, "user 'harry' already exists");
  const login = new LoginFailedError("BadCredentials: wrong user name or password");
  assert.equal(login.errorType, "BadCredentials");
  const untyped = new ServiceError("something odd");
  assert.equal(untyped.errorType, undefined);
  assert.equal(untyped.errorMessage, "something odd");
});

test("the names say who timed out", () => {
  assert.ok(brokerError(ClientError.TIMEOUT) instanceof ServiceTimeoutError);
  assert.ok(!(new ClientTimeoutError("x") instanceof BrokerError));
  assert.ok(brokerError(ClientError.KICKED) instanceof KickedError);
  assert.ok(brokerError(ClientError.UNKNOWN_ROUTE) instanceof UnknownRouteError);
  assert.ok(brokerError(ClientError.BAD_REQUEST) instanceof BadRequestError);
});

test("DisconnectedError carries what the broker said", () => {
  const kick = new KickedError("banned");
  const lost = new DisconnectedError("session ended", kick);
  assert.equal(lost.cause, kick);
  assert.equal(lost.message, "session ended (KICKED: banned)");
  assert.equal(new DisconnectedError().message, "connection lost");
  assert.equal(new DisconnectedError().cause, undefined);
  for (const cls of [WireError, ConnectError, ClientTimeoutError, DisconnectedError]) {
    assert.ok(new cls("x") instanceof MmoError);
    assert.equal(new cls("x").name, cls.name);
  }
});
