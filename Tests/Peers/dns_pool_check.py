"""The pool against a real DNS server, run inside a private network and
mount namespace by NameResolutionTests (unshare -mn, as root).

usage: dns_pool_check.py UVRPC_TOOL POOL_PROBE WORKDIR

Brings loopback up, binds its own resolv.conf (nameserver 127.0.0.1) over
/etc/resolv.conf, answers DNS on 127.0.0.1:53 itself (dnslib) with A records
the script changes, starts `uvrpc serve` on 127.0.0.2, .3 and .4 (one port),
and drives `uvrpc-pool-probe svc.uvrpc.test:PORT`: the pool spreads over
every address, follows one added and one removed, and keeps its last answer
when the DNS server goes away. Prints one line per check; exits 1 on the
first one that fails.
"""
import os
import subprocess
import sys
import threading

from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

tool, probe, workdir = sys.argv[1:4]
NAME = "svc.uvrpc.test."
answers = {"addresses": ["127.0.0.2", "127.0.0.3"]}
lock = threading.Lock()


class Resolver(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        if str(request.q.qname) == NAME and request.q.qtype == QTYPE.A:
            with lock:
                for address in answers["addresses"]:
                    reply.add_answer(RR(NAME, QTYPE.A, rdata=A(address), ttl=1))
        return reply


def check(what, ok, detail=""):
    print(("ok: " if ok else "FAILED: ") + what + (f" ({detail})" if detail else ""), flush=True)
    if not ok:
        sys.exit(1)


subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
with open(os.path.join(workdir, "resolv.conf"), "w") as f:
    f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
with open(os.path.join(workdir, "hosts"), "w") as f:
    f.write("127.0.0.1 localhost\n")
subprocess.run(["mount", "--bind", os.path.join(workdir, "resolv.conf"), "/etc/resolv.conf"], check=True)
subprocess.run(["mount", "--bind", os.path.join(workdir, "hosts"), "/etc/hosts"], check=True)
dns = DNSServer(Resolver(), address="127.0.0.1", port=53, logger=DNSLogger(logf=lambda _: None))
dns.start_thread()

servers = []
port = 0
for host in ["127.0.0.2", "127.0.0.3", "127.0.0.4"]:
    server = subprocess.Popen([tool, "serve", "--host", host, "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    line = server.stdout.readline()
    check(f"uvrpc serve on {host}", line.startswith("listening on "), line.strip())
    port = int(line.strip().rsplit(":", 1)[1])
    servers.append(server)

pool = subprocess.Popen([probe, f"svc.uvrpc.test:{port}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True)


def ask(command):
    pool.stdin.write(command + "\n")
    pool.stdin.flush()
    answer = pool.stdout.readline().strip()
    if not answer:
        check(f"the probe answers {command!r}", False, pool.stderr.read())
    return answer


def expect_open(hosts, what):
    want = "open " + ",".join(f"{h}:{port}" for h in sorted(hosts))
    got = ask("states")
    check(what, got == want, got)


try:
    check("the probe started", pool.stdout.readline().strip() == "ready")
    expect_open(["127.0.0.2", "127.0.0.3"], "the pool connects to both addresses the name has")
    check("calls are answered", ask("calls 20") == "calls ok 20")
    with lock:
        answers["addresses"] = ["127.0.0.3", "127.0.0.4"]
    check("resolved again", ask("update") == "updated")
    expect_open(["127.0.0.3", "127.0.0.4"], "it follows .4 added and .2 removed")
    check("calls are answered after the change", ask("calls 20") == "calls ok 20")
    dns.stop()
    check("resolved again with the DNS server gone", ask("update") == "updated")
    expect_open(["127.0.0.3", "127.0.0.4"], "it keeps the last answer")
    check("calls are answered without DNS", ask("calls 20") == "calls ok 20")
    pool.stdin.write("quit\n")
    pool.stdin.flush()
    check("the probe closed its pool and exited", pool.wait(timeout=20) == 0)
finally:
    if pool.poll() is None:
        pool.kill()
    for server in servers:
        server.terminate()
        server.wait(timeout=20)
print("dns check: all ok", flush=True)
