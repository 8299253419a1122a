"""The origin behind profile.sh and ab.sh: every GET answers BODY_BYTES bytes, cacheable for
an hour, so only the fill and warm-up reach it. Usage: origin.py PORT BODY_BYTES."""

import http.server
import sys

BODY = b"x" * int(sys.argv[2])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Cache-Control", "public, max-age=3600")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


class Server(http.server.ThreadingHTTPServer):
    # socketserver's default backlog is 5: a fill 16 requests wide overflowed it, and each
    # dropped SYN cost its request a one-second retransmit.
    request_queue_size = 128


Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
