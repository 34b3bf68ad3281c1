"""PAdES signatures inside PDFs (pyHanko), reproducible: the same PDF, signing time and key give
the same signed bytes, so a regenerated evidence report is byte-identical to the first.

What would otherwise differ from one signing to the next is fixed: the signing time is the
caller's (a campaign's completion, not the clock), the document's second identifier is derived
from the unsigned bytes instead of drawn at random, the signature is invisible (no appearance
stream, no font subset with a random name) and the scheme is RSA PKCS#1 v1.5 with SHA-256,
which involves no randomness (unlike RSA-PSS or ECDSA).

The key and certificate come from CCM_EVIDENCE_SIGNING_KEY / CCM_EVIDENCE_SIGNING_CERT (PEM
paths). In development and tests (DEBUG) they default to a self-signed pair made once under
var/evidence-signing/; without them in production a PDF is left unsigned and says so."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.metadata.model import DocumentMetadata
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

FIELD_NAME = "CCMEvidence"
DEV_SUBJECT = "CCM development evidence signing (self-signed)"


class SigningUnavailable(Exception):
    """No key and certificate are configured: the PDF cannot be signed."""


def _paths() -> tuple[Path, Path] | None:
    key, cert = settings.CCM_EVIDENCE_SIGNING_KEY, settings.CCM_EVIDENCE_SIGNING_CERT
    if not key or not cert:
        return None
    key_path, cert_path = Path(key), Path(cert)
    development = Path(settings.CCM_EVIDENCE_SIGNING_DEV_DIR)
    if key_path.parent == development and not key_path.exists() and not cert_path.exists():
        development_pair_make(key_path=key_path, cert_path=cert_path)
    return key_path, cert_path


def development_pair_make(*, key_path: Path, cert_path: Path) -> None:
    """A self-signed RSA key and certificate for development and tests, written once
    (atomically: two processes starting together keep one of the two pairs whole)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEV_SUBJECT)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
        .not_valid_after(dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    for path, data in (
        (
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ),
        (cert_path, cert.public_bytes(serialization.Encoding.PEM)),
    ):
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_bytes(data)
        os.chmod(temporary, 0o600)
        if not path.exists():
            os.replace(temporary, path)
        else:
            temporary.unlink()


def signing_available() -> bool:
    return _paths() is not None


def _signer() -> signers.SimpleSigner:
    paths = _paths()
    if paths is None:
        raise SigningUnavailable(
            "CCM_EVIDENCE_SIGNING_KEY and CCM_EVIDENCE_SIGNING_CERT are not set."
        )
    key_path, cert_path = paths
    signer = signers.SimpleSigner.load(
        key_file=str(key_path), cert_file=str(cert_path), signature_mechanism=None
    )
    if signer is None:
        raise SigningUnavailable(f"The key {key_path} or certificate {cert_path} cannot be read.")
    return signer


@dataclass
class _SignedAt(DocumentMetadata):
    """Document metadata whose modification date stays the signing time: pyHanko sets it to
    "now" just before writing."""

    signed_at: dt.datetime | None = None

    def __setattr__(self, name: str, value) -> None:
        if name == "last_modified" and value == "now" and getattr(self, "signed_at", None):
            value = self.signed_at
        super().__setattr__(name, value)


class _AtTime(signers.PdfSigner):
    """A PdfSigner whose signing time is given, not read from the clock."""

    def __init__(self, *args, when: dt.datetime, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._when = when

    def init_signing_session(self, *args, **kwargs):
        session = super().init_signing_session(*args, **kwargs)
        session.system_time = self._when
        return session


def pdf_sign(pdf: bytes, *, when: dt.datetime, reason: str, location: str = "") -> bytes:
    """`pdf` with an invisible PAdES signature (ETSI.CAdES.detached) made at `when`."""
    signer = _signer()
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    # The file's second identifier says "this revision": derived from what is signed instead of
    # random, so signing the same bytes twice gives the same file.
    first = writer.document_id[0]
    writer._document_id = generic.ArrayObject(
        [
            generic.ByteStringObject(first),
            generic.ByteStringObject(hashlib.sha256(pdf).digest()[:16]),
        ]
    )
    # The revision's modification date is the signing time, not the clock's.
    writer._meta = _SignedAt(signed_at=when)
    meta = signers.PdfSignatureMetadata(
        field_name=FIELD_NAME,
        reason=reason,
        location=location or None,
        subfilter=fields.SigSeedSubFilter.PADES,
        md_algorithm="sha256",
    )
    out = io.BytesIO()
    _AtTime(
        meta,
        signer,
        new_field_spec=fields.SigFieldSpec(sig_field_name=FIELD_NAME),
        when=when,
    ).sign_pdf(writer, output=out)
    return out.getvalue()


@dataclass
class SignatureCheck:
    """What validating a PDF's signature found: intact (the signed bytes are unchanged),
    valid (the signature matches the certificate), trusted (the certificate chains to the
    configured one), and who signed when."""

    intact: bool
    valid: bool
    trusted: bool
    coverage: str
    signer: str
    signed_at: dt.datetime | None
    summary: str

    @property
    def ok(self) -> bool:
        return self.intact and self.valid and self.trusted and self.coverage == "ENTIRE_FILE"


def pdf_signature_check(pdf: bytes) -> SignatureCheck | None:
    """The PDF's signature validated against the configured certificate as the trust root
    (None when the PDF carries no signature)."""
    reader = PdfFileReader(io.BytesIO(pdf))
    if not reader.embedded_signatures:
        return None
    paths = _paths()
    roots = []
    if paths is not None:
        from asn1crypto import pem, x509

        data = paths[1].read_bytes()
        if pem.detect(data):
            _, _, data = pem.unarmor(data)
        roots = [x509.Certificate.load(data)]
    status = validate_pdf_signature(
        reader.embedded_signatures[0], ValidationContext(trust_roots=roots)
    )
    return SignatureCheck(
        intact=status.intact,
        valid=status.valid,
        trusted=status.trusted,
        coverage=status.coverage.name if status.coverage else "",
        signer=status.signing_cert.subject.human_friendly,
        signed_at=status.signer_reported_dt,
        summary=status.summary(),
    )
