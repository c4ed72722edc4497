"""Run a tf.data service dispatcher or decoding worker for tf-lars-train.

    python tools/data_service.py dispatcher --port=5050
    python tools/data_service.py worker --dispatcher=cpu-0:5050 --port=5051
    tf-lars-train ... --data_service=cpu-0:5050

One dispatcher per run (any machine the trainers reach); one worker per CPU
machine (or several on a large one), each reading the shards by the path
the trainer is given (a shared file system or gs://). A worker tells the
trainers to fetch batches from `--host` (default: this machine's name), so
that name must resolve from the trainers' machines. The dispatcher keeps
its state in memory: restarting it ends the running job (give --work_dir,
on storage that survives, for a dispatcher that recovers its jobs). Both
run until stopped (SIGTERM or Ctrl-C).
"""

import argparse
import os
import signal
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    roles = p.add_subparsers(dest="role", required=True)
    d = roles.add_parser("dispatcher", help="hands out shards to workers, names jobs")
    d.add_argument("--port", type=int, default=5050)
    d.add_argument("--work_dir", default=None, help="where the dispatcher keeps its state")
    w = roles.add_parser("worker", help="decodes and batches, serves the trainers")
    w.add_argument("--dispatcher", required=True, help="HOST:PORT of the dispatcher")
    w.add_argument("--port", type=int, default=0, help="0: any free port")
    w.add_argument("--host", default=socket.gethostname(), help="the name trainers reach")
    return p.parse_args(argv)


def serve(args):
    import tensorflow as tf

    service = tf.data.experimental.service
    if args.role == "dispatcher":
        server = service.DispatchServer(
            service.DispatcherConfig(
                port=args.port,
                work_dir=args.work_dir,
                fault_tolerant_mode=bool(args.work_dir),
            )
        )
        print(f"tf.data service dispatcher at {socket.gethostname()}:{args.port}", flush=True)
    else:
        from tf_lars.data.service import check_answers

        check_answers(args.dispatcher)
        server = service.WorkerServer(
            service.WorkerConfig(
                dispatcher_address=args.dispatcher.split("://")[-1],
                worker_address=f"{args.host}:%port%",
                port=args.port,
            )
        )
        print(f"tf.data service worker of {args.dispatcher}", flush=True)
    return server


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    try:
        server = serve(args)
    except ValueError as e:
        sys.exit(f"data_service: error: {e}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.join()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
