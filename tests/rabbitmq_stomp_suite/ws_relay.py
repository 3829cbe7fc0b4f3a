"""A TCP to STOMP-over-WebSocket relay, so that a client speaking STOMP over
raw TCP (RabbitMQ's python suite: stomp.py and raw sockets) reaches a
server that speaks STOMP over WebSocket only.

Each accepted TCP connection opens one WebSocket to the target (offering
the subprotocols v10.stomp, v11.stomp, v12.stomp) and pipes bytes both
ways: each TCP read becomes one WebSocket message (text when it is UTF-8,
binary otherwise), each WebSocket message is written to the TCP socket as
it came. A close on either side closes the other. Nothing is parsed or
changed: the same relay runs in front of stompgate and of Web-STOMP.
"""

import socket
import threading

import websocket  # websocket-client

PROTOCOLS = ["v10.stomp", "v11.stomp", "v12.stomp"]


class Relay:
    def __init__(self, ws_url, host="127.0.0.1", port=0):
        self.ws_url = ws_url
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.stopped = threading.Event()

    def start(self):
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.stopped.set()
        try:
            self.listener.close()
        except OSError:
            pass

    def _accept(self):
        while not self.stopped.is_set():
            try:
                tcp, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(tcp,), daemon=True).start()

    def _connection(self, tcp):
        tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            ws = websocket.create_connection(
                self.ws_url, subprotocols=PROTOCOLS, timeout=10, enable_multithread=True
            )
        except Exception:
            tcp.close()
            return
        ws.settimeout(None)
        closed = threading.Event()

        def close_both():
            if closed.is_set():
                return
            closed.set()
            try:
                ws.close(timeout=1)
            except Exception:
                pass
            try:
                tcp.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            tcp.close()

        def tcp_to_ws():
            try:
                while True:
                    data = tcp.recv(65536)
                    if not data:
                        break
                    try:
                        ws.send(data.decode("utf-8"), opcode=websocket.ABNF.OPCODE_TEXT)
                    except UnicodeDecodeError:
                        ws.send(data, opcode=websocket.ABNF.OPCODE_BINARY)
            except Exception:
                pass
            close_both()

        threading.Thread(target=tcp_to_ws, daemon=True).start()
        try:
            while True:
                opcode, data = ws.recv_data()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                if opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
                    tcp.sendall(data)
        except Exception:
            pass
        close_both()
