"""A Switchyard worker in Python, written from proto/proto/switchyard/v1/workers.proto alone.

Kinds: echo (output = payload), upper (payload in capitals), sleep (payload = milliseconds;
stops when cancelled). Generate the stubs first (see README.md), then:
    python worker.py --coordinator 127.0.0.1:50051 --worker-id py-1 --queues default
"""
import argparse, logging, os, queue, signal, sys, threading, time

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--coordinator", default="127.0.0.1:50051", help="HOST:PORT")
parser.add_argument("--worker-id", default=f"py-{os.getpid()}")
parser.add_argument("--queues", default="default", help="comma-separated")
parser.add_argument("--slots", type=int, default=4, help="jobs at once")
parser.add_argument("--heartbeat-interval", type=float, default=1.0, help="seconds")
parser.add_argument("--drain-grace", type=float, default=30.0, help="seconds, on SIGTERM")
parser.add_argument("--stubs", default=os.path.join(os.path.dirname(__file__), "gen"),
                    help="where grpc_tools.protoc wrote the generated modules")
args = parser.parse_args()
sys.path.insert(0, args.stubs)  # the generated modules import each other as switchyard.v1.*

import grpc  # noqa: E402
from google.protobuf.duration_pb2 import Duration  # noqa: E402
from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402
from switchyard.v1 import workers_pb2 as pb, workers_pb2_grpc as pb_grpc  # noqa: E402

logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.worker_id} %(message)s")
log = logging.getLogger()


class Cancelled(Exception):
    pass


def sleep(payload, cancel):
    if cancel.wait(int(payload or b"0") / 1000):  # True: woken by the cancel, not the timer
        raise Cancelled("cancelled while sleeping")
    return b""


HANDLERS = {"echo": lambda p, c: p, "upper": lambda p, c: p.upper(), "sleep": sleep}
stopping = threading.Event()  # SIGTERM/SIGINT: drain and exit


class Session:
    """One Connect stream: hello, welcome, then assignments until the stream ends."""

    def __init__(self, stub):
        self.stub, self.outbox, self.lock = stub, queue.Queue(), threading.Lock()
        self.running = {}  # (job_id, attempt, epoch), the fencing token (3.) -> cancel event
        self.ended, self.draining, self.closed = threading.Event(), False, False
        self.peer_seq, self.last_heard = 0, time.monotonic()

    def send(self, **message):
        with self.lock:
            if not self.closed:
                self.outbox.put(pb.WorkerMessage(**message))

    def close(self):
        with self.lock:
            self.closed = True
            self.outbox.put(None)  # ends the request stream

    def requests(self):
        while (m := self.outbox.get()) is not None:
            yield m

    def run(self):
        interval = Duration()
        interval.FromMilliseconds(int(args.heartbeat_interval * 1000))
        self.send(hello=pb.Hello(worker_id=args.worker_id, queues=args.queues.split(","),
                                 kinds=sorted(HANDLERS), slots=args.slots, version="py-0.1",
                                 heartbeat_interval=interval))
        self.call = self.stub.Connect(self.requests())
        try:
            responses = iter(self.call)
            no_welcome = threading.Timer(10, self.call.cancel)  # a hung connect gives up
            no_welcome.start()
            first = next(responses)
            no_welcome.cancel()
            if first.WhichOneof("message") != "welcome":
                raise RuntimeError(f"expected a welcome, got {first}")
            self.max_result = first.welcome.max_result_bytes or 8 << 20
            theirs = first.welcome.heartbeat_interval.ToMilliseconds() / 1000
            judge = max(theirs, args.heartbeat_interval)  # silence is judged by the slower side
            print(f"python-worker {args.worker_id} connected", flush=True)
            threading.Thread(target=self.read, args=(responses,), daemon=True).start()
            threading.Thread(target=self.heartbeat, args=(judge,), daemon=True).start()
            while not self.ended.wait(0.05):  # until the stream ends, or SIGTERM
                if stopping.is_set():
                    self.drain()
                    self.ended.wait(5)  # the coordinator ends the stream after our half-close
                    break
        finally:
            with self.lock:
                lost = list(self.running.values())
            for cancel in lost:  # the coordinator re-queues them; stop the handlers
                cancel.set()
            self.close()
            self.call.cancel()

    def read(self, responses):
        try:
            for m in responses:
                self.last_heard = time.monotonic()
                which = m.WhichOneof("message")
                if which == "heartbeat":
                    self.peer_seq = m.heartbeat.sequence
                elif which == "assignment":
                    self.start(m.assignment)
                elif which == "cancel":
                    c = m.cancel  # epoch 0 (a coordinator from before epochs): any epoch
                    with self.lock:
                        cancels = [event for (job_id, attempt, epoch), event in self.running.items()
                                   if (job_id, attempt) == (c.job_id, c.attempt)
                                   and c.epoch in (0, epoch)]
                    for cancel in cancels:  # a cancel for an attempt we no longer hold is ignored
                        log.info("cancel %s: %s", c.job_id, c.reason)
                        cancel.set()
                elif which == "drain":
                    log.info("the coordinator drains: %s", m.drain.reason)
                    self.draining = True
                elif which == "hold":  # a restart: this small worker does not hold on (7.)
                    log.info("the coordinator restarts: %s", m.hold.reason)
        except grpc.RpcError as e:
            if not self.closed:
                log.warning("stream failed: %s", e.details())
        finally:
            self.ended.set()

    def heartbeat(self, judge):
        seq = 0
        while not self.ended.wait(args.heartbeat_interval):
            if time.monotonic() - self.last_heard > 3 * judge:
                log.warning("the coordinator is silent; reconnecting")
                self.call.cancel()
                return
            seq += 1
            now = Timestamp()
            now.GetCurrentTime()
            self.send(heartbeat=pb.Heartbeat(sequence=seq, sent_at=now, ack=self.peer_seq))

    def start(self, a):
        cancel = threading.Event()
        with self.lock:
            if self.draining or len(self.running) >= args.slots:  # at most `slots` at once
                self.outbox.put(pb.WorkerMessage(release=pb.Release(
                    job_id=a.job_id, attempt=a.attempt, epoch=a.epoch)))
                return
            self.running[(a.job_id, a.attempt, a.epoch)] = cancel
        log.info("start %s %s attempt %d", a.kind, a.job_id, a.attempt)
        threading.Thread(target=self.execute, args=(a, cancel), daemon=True).start()

    def execute(self, a, cancel):
        payload = a.payload
        if not payload and len(a.dependency_outputs) == 1:  # the pipeline convention (7.)
            payload = next(iter(a.dependency_outputs.values()))
        try:
            output = HANDLERS[a.kind](payload, cancel)
            if len(output) > self.max_result:
                raise ValueError(f"output of {len(output)} bytes is over {self.max_result}")
            result = pb.AttemptResult(job_id=a.job_id, attempt=a.attempt, epoch=a.epoch,
                                      output=output)
        except Exception as e:
            failure = pb.JobFailure(message=f"{type(e).__name__}: {e}",
                                    retryable=not isinstance(e, ValueError),
                                    cancelled=isinstance(e, Cancelled))
            result = pb.AttemptResult(job_id=a.job_id, attempt=a.attempt, epoch=a.epoch,
                                      failure=failure)
        with self.lock:
            if self.running.pop((a.job_id, a.attempt, a.epoch), None) is None:
                return  # released while draining: nothing more to say about it
        outcome = result.failure.message if result.HasField("failure") else "succeeded"
        log.info("%s %s attempt %d: %s", a.kind, a.job_id, a.attempt, outcome)
        self.send(result=result)  # with the attempt and epoch: the coordinator fences on them
        if not self.draining:
            self.send(credit=pb.Credit(slots=1))  # the slot is free: the handler returned

    def drain(self):
        log.info("draining: %d running, grace %.1fs", len(self.running), args.drain_grace)
        self.draining = True
        self.send(drain=pb.Drain(reason="SIGTERM"))
        give_up = time.monotonic() + args.drain_grace
        while self.running and time.monotonic() < give_up and not self.ended.is_set():
            time.sleep(0.05)
        with self.lock:
            rest, self.running = self.running, {}
        for (job_id, attempt, epoch), cancel in rest.items():  # back to the queue, uncounted
            self.send(release=pb.Release(job_id=job_id, attempt=attempt, epoch=epoch))
            cancel.set()
        self.close()  # after everything queued: the request stream ends, half-closed


def main():
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    backoff = 0.1
    while not stopping.is_set():
        # A fresh channel each time: our backoff, not grpc's (which grows to minutes), decides.
        channel = grpc.insecure_channel(args.coordinator)
        try:
            Session(pb_grpc.WorkerServiceStub(channel)).run()
            backoff = 0.1
        except (grpc.RpcError, RuntimeError, StopIteration) as e:
            log.warning("connect: %s", e.details() if isinstance(e, grpc.RpcError) else e)
        finally:
            channel.close()
        stopping.wait(backoff)  # reconnect with backoff, unless told to stop
        backoff = min(backoff * 2, 5.0)
    log.info("stopped")


if __name__ == "__main__":
    main()
