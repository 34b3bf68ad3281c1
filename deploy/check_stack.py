"""Follow the README's Deployment section on loopback and check the result answers.

    .venv/bin/python deploy/check_stack.py     # needs PostgreSQL on 127.0.0.1:5432 and Redis

Creates a throwaway PostgreSQL database, starts an S3 server (moto, on a free port) with a
bucket and a Postmark stub, runs the release steps (migrate, collectstatic, check --deploy), then
the processes (gunicorn with 2 workers; for each of two machines a cluster for the default queue
and one for each named queue) with the production environment
(DEBUG=false, STORAGE_BACKEND=s3, CACHE_URL=redis, JSON logs). It checks /healthz, creates an API
key, a customer and one communication through the API, and waits until the communication is
sent, the stub has the message and the document is in the bucket with its hash. Everything is
stopped and the database dropped at the end. Last line: `stack: ok …` or the failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from deploy import stack  # noqa: E402

QUEUES = "render,dispatch,webhooks"
ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CHECK_REDIS_URL", "rediscache://127.0.0.1:6379/11")


def sql_admin(statement: str) -> None:
    import psycopg

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(statement)


def check(ok: bool, what: object) -> None:
    if not ok:
        raise SystemExit(f"stack: FAILED — {what}")


def api(base: str, path: str, key: str, body: dict | None = None) -> dict:
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{base}{path}",
        data=json.dumps(body).encode() if body is not None else None,
        method="POST" if body is not None else "GET",
        headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.load(response)


def main() -> None:
    import boto3
    from moto.server import ThreadedMotoServer
    from postmark_stub import PostmarkStub

    workdir = Path(tempfile.mkdtemp(prefix="ccm-check-stack-"))
    db_name = f"ccm_check_{os.getpid()}"
    s3_port = stack.free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    endpoint = f"http://127.0.0.1:{s3_port}"
    creds = {"AWS_ACCESS_KEY_ID": "check", "AWS_SECRET_ACCESS_KEY": "check-secret"}
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(
        Bucket="ccm-documents", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"}
    )
    processes = []
    sql_admin(f'CREATE DATABASE "{db_name}"')
    try:
        with PostmarkStub(max_lifetime_s=1800) as stub:
            env = stack.production_env(
                DATABASE_URL=f"postgres://postgres@127.0.0.1:5432/{db_name}",
                STORAGE_BACKEND="s3",
                AWS_STORAGE_BUCKET_NAME="ccm-documents",
                AWS_S3_ENDPOINT_URL=endpoint,
                AWS_S3_REGION_NAME="eu-west-1",
                CACHE_URL=REDIS_URL,
                EMAIL_BACKEND="anymail.backends.postmark.EmailBackend",
                POSTMARK_SERVER_TOKEN=stub.token,
                POSTMARK_API_URL=stub.url,
                STATIC_ROOT=str(workdir / "static"),
                CCM_ENABLED_CHANNELS="email",
                CCM_TASK_QUEUES=QUEUES,
                **creds,
            )
            started = time.monotonic()
            # Release steps, as the README says.
            stack.manage("migrate", "--noinput", env=env, timeout=600)
            stack.manage("collectstatic", "--noinput", env=env, timeout=900)
            # The published template library (seed_demo refuses DEBUG off, for its demo logins;
            # this database is thrown away). A real deployment imports and signs off its own.
            stack.manage("seed_demo", env={**env, "DEBUG": "true"}, timeout=600)
            check_env = {**env, "SECURE_SSL_REDIRECT": "true"}
            stack.manage("check", "--deploy", "--fail-level", "WARNING", env=check_env)
            key = (
                stack.manage(
                    "create_api_key",
                    "check-stack",
                    "--scopes",
                    "customers:write,communications:write,communications:read",
                    env=env,
                )
                .strip()
                .splitlines()[-1]
            )
            print(f"release steps done in {time.monotonic() - started:.0f} s")
            # The processes.
            port = stack.free_port()
            processes.append(stack.gunicorn(port=port, env=env, log=workdir / "web.log"))
            # Two machines, each with a cluster for the default queue and one for each named
            # queue (one worker each: this is a check, not a benchmark).
            for machine in ("a", "b"):
                for queue in ("", *QUEUES.split(",")):
                    processes.append(
                        stack.qcluster(
                            env={**env, **({"Q_CLUSTER_NAME": queue} if queue else {})},
                            log=workdir / f"cluster-{machine}-{queue or 'default'}.log",
                            workers=1,
                        )
                    )
            base = f"http://127.0.0.1:{port}"
            status = stack.wait_http(f"{base}/healthz", process=processes[0], timeout=120)
            with urllib.request.urlopen(f"{base}/healthz") as response:  # noqa: S310
                health = json.load(response)
            print(f"/healthz {status}: {json.dumps(health['checks'], sort_keys=True)[:300]}")
            check(status == 200 and health["status"] == "ok", health)
            # One communication through the API.
            api(
                base,
                "/api/v1/customers",
                key,
                {"external_ref": "CHK-1", "name": "Ada Lovelace", "emails": ["ada@example.org"]},
            )
            data = {
                "customer": {"name": "Ada Lovelace", "salutation": "Ada"},
                "reference": "DOC-CHECK-1",
                "document_title": "Your annual summary",
                "document_date": "2026-04-12",
                "portal_url": "https://my.example/documents/DOC-CHECK-1",
                "available_until": "2027-04-12",
            }
            created = api(
                base,
                "/api/v1/communications",
                key,
                {"template": "document_ready", "customer": "CHK-1", "data": data},
            )
            deadline = time.monotonic() + 180
            while True:
                detail = api(base, f"/api/v1/communications/{created['id']}", key)
                if detail["status"] in ("sent", "delivered"):
                    break
                check(time.monotonic() < deadline, f"not sent: {detail['status']}")
                time.sleep(0.5)
            sent = stub.stats()
            # (the demo data's own communications are sent by the clusters too)
            check(sent["distinct"] >= 1 and sent["duplicated"] == 0, sent)
            objects = client.list_objects_v2(Bucket="ccm-documents").get("Contents", [])
            documents = [o["Key"] for o in objects if o["Key"].startswith("documents/")]
            for document in detail.get("documents", []):
                body = client.get_object(Bucket="ccm-documents", Key=documents[0])["Body"].read()
                check(hashlib.sha256(body).hexdigest() == document["sha256"], document)
            print(
                "stack: ok — gunicorn + 2 machines' clusters (default, render, dispatch, "
                f"webhooks queues) + PostgreSQL + Redis + S3; communication "
                f"{detail['status']} in {time.monotonic() - started:.0f} s from a fresh "
                f"database; {sent['distinct']} messages at the stub, none twice; "
                f"{len(documents)} document objects in the bucket"
            )
    finally:
        for process in processes:
            stack.stop(process)
        s3.stop()
        sql_admin(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        print(f"logs in {workdir}")


if __name__ == "__main__":
    main()
