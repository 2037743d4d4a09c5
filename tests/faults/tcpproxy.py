"""A loopback TCP proxy that can partition the link it carries.

    proxy = TcpProxy(listen_port, target_port, name="redis").start()
    proxy.blackhole()   # a silent network: connections stay open, nothing moves
    proxy.heal()        # what was held moves on, as TCP would deliver it late
    proxy.stop()

Blackholed, the proxy still accepts new connections (the kernel would
complete the handshake anyway) but forwards no byte in either direction. It
holds what it already read instead of dropping it, and reads no more, so the
senders' kernel buffers fill up as on a real partition; when the partition
heals the held bytes move on in order, like TCP retransmissions. A peer that
closes its end while blackholed is seen only after the heal.

For the MySQL protocol the proxy can also cut a connection at its next
COMMIT (cut_at_commit): "before" drops the connection without forwarding
the COMMIT (the server rolls the transaction back), "after" forwards the
COMMIT and drops the connection when the server's answer comes, without
passing that answer on (the transaction is committed and the client never
hears it). Either way the client sees its connection lost during COMMIT.

Loopback only, standard library only. Also runnable by hand:
    python3 tcpproxy.py LISTEN_PORT TARGET_PORT
(forwards until interrupted; for trying things out).
"""

import socket
import struct
import sys
import threading
import time

HOST = "127.0.0.1"
CHUNK = 65536


class _Pair:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, proxy, client, target):
        self.proxy = proxy
        self.client = client
        self.target = target
        self.closed = False
        self.lock = threading.Lock()
        self.mysql_buf = b""  # client -> server bytes not yet split into packets
        self.cut_on_reply = False  # "after": drop the server's next answer and cut

    def close(self, abort=False):
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for s in (self.client, self.target):
            try:
                if abort:
                    # RST rather than FIN: the peer sees the connection lost.
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        self.proxy._forget(self)

    def pump(self, src, dst, upstream):
        """Copies src to dst until either end closes, holding data while the
        proxy is blackholed."""
        try:
            while not self.closed:
                if not self.proxy._wait_open(0.2):
                    continue  # blackholed: read nothing, forward nothing
                try:
                    data = src.recv(CHUNK)
                except socket.timeout:
                    continue
                if not data:
                    # Held until the partition heals, like a FIN in flight.
                    while not self.closed and not self.proxy._wait_open(0.2):
                        pass
                    break
                while not self.closed and not self.proxy._wait_open(0.2):
                    pass  # read just before the blackhole began: hold it
                if self.closed:
                    break
                if upstream and self.proxy.mysql:
                    data = self._mysql_client_bytes(data)
                    if data is None:
                        return
                elif not upstream and self.cut_on_reply:
                    # The server answered the COMMIT: the answer never arrives.
                    self.proxy._note_cut("after")
                    self.close(abort=True)
                    return
                dst.sendall(data)
        except OSError:
            pass
        self.close()

    def _mysql_client_bytes(self, data):
        """Splits the client's bytes into MySQL packets (always, to stay in
        step with the framing) and acts on a COMMIT while a cut is armed.
        Returns the bytes to forward, or None when the connection was cut."""
        self.mysql_buf += data
        out = b""
        while len(self.mysql_buf) >= 4:
            plen = self.mysql_buf[0] | self.mysql_buf[1] << 8 | self.mysql_buf[2] << 16
            if len(self.mysql_buf) < 4 + plen:
                break
            whole = self.mysql_buf[:4 + plen]
            self.mysql_buf = self.mysql_buf[4 + plen:]
            # A command is the first packet of its exchange (sequence 0);
            # COM_QUERY is 0x03 followed by the statement text.
            payload = whole[4:]
            is_commit = (whole[3] == 0 and payload[:1] == b"\x03" and
                         payload[1:].strip().rstrip(b";").upper() == b"COMMIT")
            mode = self.proxy._take_cut() if is_commit else None
            if mode == "before":
                self.proxy._note_cut("before")
                self.close(abort=True)
                return None
            out += whole
            if mode == "after":
                # The client waits for this answer before it sends anything
                # else; the server's next bytes are it.
                self.cut_on_reply = True
                self.mysql_buf = b""
                break
        return out


class TcpProxy:
    def __init__(self, listen_port, target_port, name="proxy", mysql=False):
        self.listen_port = listen_port
        self.target_port = target_port
        self.name = name
        self.mysql = mysql
        self.lock = threading.Lock()
        self.open_cond = threading.Condition(self.lock)
        self.blackholed = False
        self.pairs = set()
        self.accepted = 0
        self.cuts = []  # ("before" | "after", time)
        self._cut_mode = None
        self._cut_left = 0
        self._stop = False
        self.sock = None
        self.thread = None

    # ---- control

    def start(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, self.listen_port))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._accept_loop, daemon=True,
                                       name="proxy-%s" % self.name)
        self.thread.start()
        return self

    def blackhole(self):
        with self.lock:
            self.blackholed = True

    def heal(self):
        with self.lock:
            self.blackholed = False
            self.open_cond.notify_all()

    def cut_all(self):
        """Drops every proxied connection at once (RST to both ends)."""
        with self.lock:
            pairs = list(self.pairs)
        for p in pairs:
            p.close(abort=True)

    def cut_at_commit(self, mode, count=1):
        """Arms a cut of the next count COMMITs (mode "before" or "after")."""
        assert self.mysql and mode in ("before", "after")
        with self.lock:
            self._cut_mode = mode
            self._cut_left = count

    def disarm(self):
        with self.lock:
            self._cut_mode = None
            self._cut_left = 0

    def connections(self):
        with self.lock:
            return len(self.pairs)

    def stop(self):
        self._stop = True
        self.heal()
        if self.thread is not None:
            self.thread.join(3)
        try:
            self.sock.close()
        except OSError:
            pass
        self.cut_all()

    def __enter__(self):
        return self.start()

    def __exit__(self, *a):
        self.stop()

    # ---- internals

    def _wait_open(self, timeout):
        with self.lock:
            if self.blackholed and not self._stop:
                self.open_cond.wait(timeout)
            return not self.blackholed or self._stop

    def _take_cut(self):
        with self.lock:
            if self._cut_left <= 0:
                return None
            self._cut_left -= 1
            return self._cut_mode

    def _note_cut(self, mode):
        with self.lock:
            self.cuts.append((mode, time.monotonic()))

    def _forget(self, pair):
        with self.lock:
            self.pairs.discard(pair)

    def _accept_loop(self):
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                target = socket.create_connection((HOST, self.target_port), timeout=5)
            except OSError:
                client.close()  # the backend itself is down: as a refused connect
                continue
            for s in (client, target):
                s.settimeout(0.2)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(self, client, target)
            with self.lock:
                self.pairs.add(pair)
                self.accepted += 1
            threading.Thread(target=pair.pump, args=(client, target, True), daemon=True).start()
            threading.Thread(target=pair.pump, args=(target, client, False), daemon=True).start()


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    p = TcpProxy(int(sys.argv[1]), int(sys.argv[2])).start()
    print("forwarding 127.0.0.1:%s -> 127.0.0.1:%s (Ctrl-C ends)" % (sys.argv[1], sys.argv[2]))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        p.stop()


if __name__ == "__main__":
    main()
