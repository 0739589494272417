#!/usr/bin/env python3
"""Container health check without curl: exit 0 when URL answers with an accepted status.

    healthcheck.py URL [--accept 200,503] [--timeout 5]

Used by docker-compose.yaml for mlflow, airflow-apiserver, airflow-scheduler and web.
`--accept` exists for endpoints that report "up but degraded" with a non-200 status
(e.g. the web app's readiness probe /healthz?ready=1 answers 503 while no champion model
is loaded: a liveness check that must not restart the process for that accepts 200,503).
"""
import argparse
import sys
import urllib.error
import urllib.request


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("--accept", default="200", help="comma-separated HTTP statuses counted as healthy")
    ap.add_argument("--timeout", type=float, default=5.0)
    args = ap.parse_args(argv)
    accept = {int(s) for s in args.accept.split(",") if s.strip()}
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as e:
        status = e.code
    except Exception as e:  # connection refused, timeout, DNS...
        print(f"unhealthy: {args.url}: {e}", file=sys.stderr)
        return 1
    if status in accept:
        return 0
    print(f"unhealthy: {args.url} answered HTTP {status} (accepted: {sorted(accept)})", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
