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
 * A socket is known as a fetch socket by the API key of the requests written
 * to it; kafkajs writes each request as one buffer: size (int32), API key
 * (int16), version, correlation id. `fetch_sockets_test.ts` checks this
 * against the broker, so a kafkajs upgrade that changes it fails a test.
 *
 * @module
 */
import net from "node:net";
import tls from "node:tls";
import type { ISocketFactory } from "kafkajs";

/** Kafka's API key of Fetch requests. */
const FETCH_API_KEY = 1;
/** kafkajs's TCP keep-alive delay, kept as its default socket factory sets it. */
const KEEP_ALIVE_MS = 60_000;

/** Sockets made by one kafkajs client, and which of them carry fetches. */
export class FetchSockets {
  readonly #fetching = new Set<net.Socket>();
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

  /** Sockets that carried a fetch and are still open. */
  get fetching(): number {
    return this.#fetching.size;
  }

  /**
   * Closes every socket that carried a fetch, and any that sends one from
   * now on; kafkajs gives up their fetches.
   */
  endFetches(): void {
    this.#ending = true;
    for (const socket of this.#fetching) close(socket);
  }

  #watch(socket: net.Socket): void {
    const write = socket.write;
    const fetching = this.#fetching;
    const ending = () => this.#ending;
    socket.write = function (this: net.Socket, chunk: unknown, ...rest: unknown[]): boolean {
      if (
        chunk instanceof Uint8Array && chunk.byteLength >= 6 &&
        ((chunk[4]! << 8) | chunk[5]!) === FETCH_API_KEY && !fetching.has(socket)
      ) {
        fetching.add(socket);
        if (ending()) queueMicrotask(() => close(socket));
      }
      return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest);
    } as typeof socket.write;
    socket.once("close", () => fetching.delete(socket));
  }
}

/** Destroys `socket` and raises the event kafkajs takes for a close by the server. */
function close(socket: net.Socket): void {
  socket.destroy();
  socket.emit("end");
}
