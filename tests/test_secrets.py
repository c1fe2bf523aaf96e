"""Secrets planted everywhere a user puts them never reach the ledger, journals, MLflow, verdict
reasons, CLI output or logs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import mlchaos, wipe_doc, write_stage

from mlchaos_steps.redaction import REDACTED, redact, redact_text
from mlchaos_steps.targets.mlflow import client

SECRETS = {
    "password_arg": "hunter2-pw-value",
    "api_key_arg": "ak-7f3c9e1d2b4a6",
    "url_password": "s3cr3t-url-pw",
    "bearer": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "database_url": "db-pass-9x8y7z",
    "github_pat": "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "slack_webhook": "T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
    "sentry_key": "0123456789abcdef0123456789abcdef",
    "aws_key_id": "AKIAIOSFODNN7EXAMPLE",
    "aws_secret": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "output_password": "printed-password-42",
    "output_token": "hf_abcdefghijklmnopqrstuvwxyz012345",
    "tracking_password": "mlflow-basic-pw",
    "openai": "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789",
    "stripe": "sk_live_abcdefghijklmnop1234",
    "token_eq": "tok-eq-val-5566",
    "private_key": "MIIEowIBAAKCAQEAprivatekeymaterial",
    "gitlab": "glpat-abcdefghij0123456789",
    "npm": "npm_abcdefghijklmnopqrstuvwxyz0123456789",
    "client_secret": "cs-0a1b2c3d4e5f",
}


def test_redact_text_knows_the_shapes() -> None:
    text = (f"postgres://u:{SECRETS['database_url']}@db/x Authorization: Bearer {SECRETS['bearer']} "
            f"{SECRETS['github_pat']} https://hooks.slack.com/services/{SECRETS['slack_webhook']} "
            f"https://{SECRETS['sentry_key']}@o1.ingest.sentry.io/5 {SECRETS['aws_key_id']} "
            f"aws_secret_access_key={SECRETS['aws_secret']} password: {SECRETS['output_password']} "
            f"{SECRETS['openai']} {SECRETS['stripe']} {SECRETS['gitlab']} {SECRETS['npm']} "
            f"-----BEGIN RSA PRIVATE KEY-----\n{SECRETS['private_key']}\n-----END RSA PRIVATE KEY-----")
    out = redact_text(text)
    leaked = [k for k, v in SECRETS.items() if v in out]
    assert leaked == [], out
    # and what is not a secret stays readable
    plain = "training resumed from step 400; blake3:0123abcd digest; loss=0.31 /data/ckpts/step-400"
    assert redact_text(plain) == plain


def test_redact_argument_lists_and_mappings() -> None:
    assert redact(["train.py", "--password", "x1", "--api-key", "x2", "--token=x3", "--epochs", "3"]) == [
        "train.py", "--password", REDACTED, "--api-key", REDACTED, "--token=" + REDACTED, "--epochs", "3"]
    env = {"DATABASE_URL": "postgres://a:b@c/d", "GITHUB_PAT": "x", "SLACK_WEBHOOK_URL": "y", "SENTRY_DSN": "z",
           "AWS_ACCESS_KEY_ID": "k", "HARMLESS": "visible", "MAX_TOKENS": 5}
    assert redact(env) == {**dict.fromkeys(["DATABASE_URL", "GITHUB_PAT", "SLACK_WEBHOOK_URL", "SENTRY_DSN",
                                            "AWS_ACCESS_KEY_ID"], REDACTED), "HARMLESS": "visible", "MAX_TOKENS": 5}


@pytest.mark.heavy(45)
def test_planted_secrets_leave_no_trace(two_versions: tuple[str, str, str], store: Path, tmp_path: Path,
                                        mlflow_server: str, mlchaos_home: Path) -> None:
    name, _, v2 = two_versions
    s = SECRETS
    printer = (f"print('connecting with password: {s['output_password']}'); "
               f"print('HF token {s['output_token']}'); "
               f"print('{{\"mlchaos_resumed_from_step\": 400}}')")
    resume = {
        "command": [sys.executable, "-c", printer, "--password", s["password_arg"], "--api-key", s["api_key_arg"],
                    f"--db=postgres://admin:{s['url_password']}@db/x", f"--auth=Bearer {s['bearer']}",
                    f"--token={s['token_eq']}", f"--openai={s['openai']}", f"--stripe={s['stripe']}",
                    f"--gl={s['gitlab']}", f"--npm={s['npm']}"],
        "max_lost_steps": 200,
        "env": {"DATABASE_URL": f"postgres://app:{s['database_url']}@db/x", "GITHUB_PAT": s["github_pat"],
                "SLACK_WEBHOOK_URL": f"https://hooks.slack.com/services/{s['slack_webhook']}",
                "SENTRY_DSN": f"https://{s['sentry_key']}@o1.ingest.sentry.io/5",
                "AWS_ACCESS_KEY_ID": s["aws_key_id"], "AWS_SECRET_ACCESS_KEY": s["aws_secret"],
                "SSH_PRIVATE_KEY": (f"-----BEGIN RSA PRIVATE KEY-----\n{s['private_key']}\n"
                                    "-----END RSA PRIVATE KEY-----"),
                "OAUTH_CLIENT_SECRET": s["client_secret"]},
    }
    stage_file = write_stage(tmp_path / "wipe.yaml", wipe_doc(store, resume=resume))
    uri_with_password = mlflow_server.replace("http://", f"http://chaos:{s['tracking_password']}@")
    env = {"MLFLOW_TRACKING_URI": uri_with_password}
    ok = mlchaos("-v", "run", str(stage_file), "--run-key", "secrets-1", "--model", name, "--version", v2, "--json",
                 env=env)
    assert ok.stdout.strip(), ok.stderr[-3000:]
    assert json.loads(ok.stdout)["verdict"] == "passed", ok.stderr
    # the same with the tracking server unreachable: errors quote the URI
    dead = {"MLFLOW_TRACKING_URI": f"http://chaos:{s['tracking_password']}@127.0.0.1:9/",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    down = mlchaos("-v", "run", str(stage_file), "--run-key", "secrets-2", "--model", name, "--version", v2, env=dead)
    assert down.returncode == 3

    places = {"cli": ok.stdout + ok.stderr + down.stdout + down.stderr}
    places["ledger"] = b"".join(p.read_bytes() for p in mlchaos_home.glob("ledger.db*")).decode("latin-1")
    places["journals"] = "".join(p.read_text() for p in (mlchaos_home / "runs").rglob("journal.json"))
    version_tags = client().get_model_version(name, v2).tags
    places["version tags"] = json.dumps(version_tags)
    run = client().get_run(version_tags["mlchaos.checkpoint-wipe.run_id"])
    places["evidence run"] = json.dumps({"params": run.data.params, "tags": run.data.tags})
    artifacts = tmp_path / "artifacts"
    client().download_artifacts(run.info.run_id, "", str(artifacts))
    places["evidence artifacts"] = "".join(p.read_text() for p in artifacts.rglob("*.json"))
    leaks = {where: [k for k, v in s.items() if v in text] for where, text in places.items()}
    assert all(not found for found in leaks.values()), leaks
    assert "connecting with password: ***" in places["journals"]  # the output is kept, the secret is not


@pytest.mark.parametrize("url", ["s3://KEY:SECRET@bucket/ckpts", "file://user:pw@/data/ckpts"])
def test_credentials_in_a_store_url_are_refused(url: str) -> None:
    from mlchaos_steps.errors import SpecError
    from mlchaos_steps.stages import parse_stage

    with pytest.raises(SpecError, match="holds credentials"):
        parse_stage({"kind": "CheckpointWipe", "spec": {"store": url, "resume": {"command": ["true"],
                                                                                 "max_lost_steps": 1}}})
