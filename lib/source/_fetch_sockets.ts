/**
 * A kafkajs socket factory that can end the connections carrying fetches,
 * so a stop does not wait out a long fetch.
 *
 * kafkajs 2.2.4 keeps one connection per broker for Fetch requests alone
 * (its ConnectionPool), and `disconnect()` waits for the fetch in flight,
 * which the broker holds for up to `maxWaitTimeInMs` when no data comes.
 * The broker cannot be asked to answer early: it reads nothing more from a
 * connection while a request of it is pending, so it does not even see our
 * FIN before the wait is over. So such a socket is destroyed, and told to
 * kafkajs as a connection the server closed: kafkajs rejects the fetch
 * (logged at debug), its fetcher ends, and the consumer leaves its group on
 * its other connection at once.
 * No batch is cut short: a fetcher sends its next fetch only after the
 * previous batch was handled, so a socket with a fetch in flight carries no
 * batch in progress, and commits travel on the other connection.
 *
 * kafkajs takes a broker's connection closed for both of its connections:
 * it disconnects them and reconnects for the next request, the LeaveGroup.
 * The old socket's `end`, when the broker answers our FIN, then still runs
 * kafkajs's handler, which rejects the requests of the connection's new
 * socket: the LeaveGroup, whose answer came later "without match". So the
 * `end` of a socket kafkajs or a stop closed itself is not passed on.
 *
 * A socket is known as a fetch socket by the API key of the requests written
 * to it; kafkajs writes each request as one buffer: size (int32), API key
 * (int16), version, correlation id. kafkajs's `end` handler is the first one
 * added after the factory returns (its `network/socket.js`).
 * `tests/kafka_consumer_stop_test.ts` checks all of this against the broker,
 * so a kafkajs upgrade that changes it fails a test.
 *
 * @module
 */
import net from "node:net";
import tls from "node:tls";
import type { Consumer, ISocketFactory } from "kafkajs";

/** Kafka's API key of Fetch requests. */
const FETCH_API_KEY = 1;
/** kafkajs's TCP keep-alive delay, kept as its default socket factory sets it. */
const KEEP_ALIVE_MS = 60_000;

type Listener = (...args: unknown[]) => void;

/** A socket of the factory, and how it is closed. */
interface Watched {
  socket: net.Socket;
  /** kafkajs's handler of a close by the server. */
  onServerEnd: Listener | null;
  /** Closed by kafkajs or a stop: a later `end` is not the server's doing. */
  closed: boolean;
}

/** Sockets made by one kafkajs client, and which of them carry fetches. */
export class FetchSockets {
  readonly #fetching = new Set<Watched>();
  #ending = false;

  /** The factory to pass as kafkajs's `socketFactory`. */
  readonly factory: ISocketFactory = ({ host, port, ssl, onConnect }) => {
    const socket = ssl
      ? tls.connect(
        { host, port, ...(net.isIP(host) ? {} : { servername: host }), ...ssl },
        onConnect,
      )
      : net.connect({ host, port }, onConnect);
    socket.setKeepAlive(true, KEEP_ALIVE_MS);
    this.#watch(socket);
    return socket;
  };

  /**
   * Disconnects `consumer`, a consumer of the client this factory serves,
   * without waiting for its fetch in flight: every socket that carried a
   * fetch, and any that sends one from now on, is closed, and kafkajs gives
   * up their fetches.
   */
  async disconnect(consumer: Consumer): Promise<void> {
    const disconnected = consumer.disconnect();
    this.#ending = true;
    for (const w of this.#fetching) close(w);
    await disconnected;
  }

  #watch(socket: net.Socket): void {
    const w: Watched = { socket, onServerEnd: null, closed: false };
    const fetching = this.#fetching;
    const ending = () => this.#ending;
    const on = socket.on as (this: net.Socket, event: string, listener: Listener) => net.Socket;
    socket.on = function (this: net.Socket, event: string, listener: Listener) {
      if (event !== "end" || w.onServerEnd !== null) return on.call(this, event, listener);
      w.onServerEnd = listener;
      return on.call(this, event, (...args: unknown[]) => {
        if (!w.closed) listener(...args);
      });
    } as typeof socket.on;
    const end = socket.end;
    socket.end = function (this: net.Socket, ...args: unknown[]) {
      w.closed = true;
      return (end as (...args: unknown[]) => net.Socket).apply(this, args);
    } as typeof socket.end;
    const write = socket.write;
    socket.write = function (this: net.Socket, chunk: unknown, ...rest: unknown[]): boolean {
      if (
        chunk instanceof Uint8Array && chunk.byteLength >= 6 &&
        ((chunk[4]! << 8) | chunk[5]!) === FETCH_API_KEY && !fetching.has(w)
      ) {
        fetching.add(w);
        if (ending()) queueMicrotask(() => close(w));
      }
      return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
    } as typeof socket.write;
    socket.once("close", () => fetching.delete(w));
  }
}

/** Destroys the socket and runs kafkajs's handler of a close by the server. */
function close(w: Watched): void {
  if (w.closed) return;
  w.closed = true;
  w.socket.destroy();
  w.onServerEnd?.();
}
