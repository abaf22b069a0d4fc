#!/usr/bin/env python3
"""NVIDIA's own GPU verifier as an oracle for veil's (differential test and
benchmark baseline), offline.

Runs the checks of NVIDIA's `nv-local-gpu-verifier` (PyPI, installed by
scripts/install-deps.sh into its own venv: run this script with that venv's
python) on given report/chain files, through the same functions its
`cc_admin.attest` calls, without a GPU and without network:

- chain: `CcAdminUtils.verify_certificate_chain` on the chain as
  `GpuCertificateChains` builds it (the file's last certificate dropped,
  NVIDIA's pinned `verifier_device_root.pem` appended; exactly 5
  certificates), with OpenSSL's verification time set to `at` instead of
  the clock;
- fwid: `CcAdminUtils.extract_fwid` (leaf certificate) equals the report's
  opaque FWID, as `verify_gpu_certificate_chain` compares them;
- signature: `AttestationReport.verify_signature` with the leaf's key
  (ECDSA P-384, SHA-384, 96-byte signature);
- nonce: `CcAdminUtils.verify_attestation_report` (request nonce, then the
  report's own driver/VBIOS versions, then the signature): False when it
  raises `NonceMismatchError`, True when it passes or fails later on the
  signature, null (no verdict) on anything else.

Not driven: `ocsp_certificate_chain_validation` and the RIM fetch (both
network-only in this package), and the RIM checks.

Input (stdin): JSON list of {"name", "report" (path of hex text), "chain"
(path of PEM), "nonce" (hex), "at" (Unix seconds)}. Output (stdout): JSON
list of {"name", "parsed", "chain", "fwid", "signature", "nonce", "error"}.
With `--bench-seconds S`: the first case (which must pass every check)
verified for at least S seconds (chain + report, as NVIDIA's verifier does
for every report), prints {"reports_per_second"}.
"""

import argparse
import datetime
import json
import logging
import os
import sys
import tempfile
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench-seconds", type=float, default=0.0)
    args = ap.parse_args()
    cases = json.load(sys.stdin)
    for c in cases:
        c["report"] = os.path.abspath(c["report"])
        c["chain"] = os.path.abspath(c["chain"])
    # verifier.config writes (and first deletes) ./verifier.log on import:
    # keep that in a private directory.
    with tempfile.TemporaryDirectory(prefix="veil-nv-oracle-") as d:
        os.chdir(d)
        out = run(cases, args.bench_seconds)
        os.chdir("/")
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


def run(cases, bench):
    """Verdicts for `cases`, or with `bench` > 0 seconds the rate of the first."""
    from OpenSSL import crypto

    from verifier.attestation import AttestationReport
    from verifier.cc_admin_utils import CcAdminUtils
    from verifier.config import BaseSettings, HopperSettings
    from verifier.exceptions import NonceMismatchError, SignatureVerificationError
    from verifier.nvml.gpu_cert_chains import GpuCertificateChains
    from verifier.nvml.test_handle import TestHandle
    from verifier.utils import convert_string_to_blob, format_vbios_version

    logging.disable(logging.CRITICAL)
    at = {"t": None}

    class Store(crypto.X509Store):
        """OpenSSL's store, verifying at the case's time, not the clock."""

        def __init__(self):
            super().__init__()
            self.set_time(at["t"])

    crypto.X509Store = Store
    settings = HopperSettings()

    def verify(c):
        at["t"] = datetime.datetime.fromtimestamp(c["at"], datetime.timezone.utc).replace(tzinfo=None)
        r = {"name": c["name"], "parsed": False, "chain": False, "fwid": False,
             "signature": False, "nonce": False, "error": None}
        with open(c["chain"], "rb") as f:
            chain = GpuCertificateChains(TestHandle(f.read())).GpuAttestationCertificateChain
        try:
            r["chain"] = bool(CcAdminUtils.verify_certificate_chain(
                chain, settings, BaseSettings.Certificate_Chain_Verification_Mode.GPU_ATTESTATION)[0])
        except Exception as e:  # NVIDIA raises for a wrong certificate count
            r["error"] = f"chain: {type(e).__name__}: {e}"
        with open(c["report"]) as f:
            data = convert_string_to_blob(f.read())
        try:
            report = AttestationReport(data, settings)
            opaque = report.get_response_message().get_opaque_data()
            report_fwid = opaque.get_data("OPAQUE_FIELD_ID_FWID").hex()
            driver = opaque.get_data("OPAQUE_FIELD_ID_DRIVER_VERSION").decode().rstrip("\0")
            vbios = format_vbios_version(opaque.get_data("OPAQUE_FIELD_ID_VBIOS_VERSION"))
        except Exception as e:
            r["error"] = f"parse: {type(e).__name__}: {e}"
            return r
        r["parsed"] = True
        r["fwid"] = CcAdminUtils.extract_fwid(chain[0], settings) == report_fwid
        r["signature"] = bool(report.verify_signature(
            chain[0].to_cryptography(), settings.signature_length, settings.HashFunction))
        try:
            CcAdminUtils.verify_attestation_report(report, chain[0], bytes.fromhex(c["nonce"]),
                                                   driver, vbios, settings)
            r["nonce"] = True
        except NonceMismatchError:
            r["nonce"] = False
        except SignatureVerificationError:  # checked after the nonce: it matched
            r["nonce"] = True
        except Exception as e:  # anything else: no verdict (the test fails on null)
            r["nonce"] = None
            r["error"] = f"report: {type(e).__name__}: {e}"
        return r

    if bench:
        first = verify(cases[0])
        if not all(first[k] for k in ("parsed", "chain", "fwid", "signature", "nonce")):
            raise SystemExit(f"NVIDIA's verifier refuses the benchmark report: {first}")
        start = time.perf_counter()
        n = 0
        while n < 3 or time.perf_counter() - start < bench:
            verify(cases[0])
            n += 1
        return {"reports_per_second": n / (time.perf_counter() - start)}
    return [verify(c) for c in cases]


if __name__ == "__main__":
    main()
