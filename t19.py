import socket, time, os, signal, sys, re
P=int(sys.argv[1]); pid=int(open(sys.argv[2]).read())
def rd(s, t=6):
    s.settimeout(t); out=b''
    try:
        while True:
            d=s.recv(65536)
            if not d: out+=b'<EOF>'; break
            out+=d
    except socket.timeout: out+=b'<TO>'
    except Exception as e: out+=repr(e).encode()
    return out
a=socket.create_connection(('127.0.0.1',P)); a.sendall(b'GET /x HTTP/1.1\r\nHo')
b=socket.create_connection(('127.0.0.1',P)); b.sendall(b'GET /x HTTP/1.1\r\nHost: a.test\r\n\r\nGET /count HTTP/1.1\r\nHost: c.test\r\n\r\n'); time.sleep(0.3); b.recv(10000)
c=socket.create_connection(('127.0.0.1',P)); c.sendall(b'GET /slow2 HTTP/1.1\r\nHost: a.test\r\n\r\n')
time.sleep(0.3); t0=time.time(); os.kill(pid, signal.SIGTERM)
time.sleep(0.3)
a.sendall(b'st: a.test\r\n\r\nGET /x HTTP/1.1\r\nHost: a.test\r\n\r\n')
b.sendall(b'GET /count HTTP/1.1\r\nHost: c.test\r\n\r\nGET /x HTTP/1.1\r\nHost: a.test\r\n\r\n')
for n,s in (('a',a),('b',b),('c',c)):
    o=rd(s,5); print(n, round(time.time()-t0,2), re.findall(rb'HTTP/1.1 \d+|[Cc]onnection: [a-z-]+|<EOF>|<TO>|count=\d+', o))
for i in range(100):
    try:
        if open('/proc/%d/stat'%pid).read().split()[2]=='Z': break
    except FileNotFoundError: break
    time.sleep(0.1)
print('exited after', round(time.time()-t0,2))
