"""Subject names for device and CA certificates."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.name import _ASN1Type
from cryptography.x509.oid import NameOID

from ztpki.errors import UnsupportedParameter
from ztpki.untrusted import quote

DEVICE_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The PrintableString alphabet (X.680 41.4): no `_`, which a device id may hold.
_PRINTABLE = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]*")
_COUNTRY = re.compile(r"[A-Z]{2}")
# The officially assigned ISO 3166-1 alpha-2 codes: a well-formed but unassigned code (XX,
# or UK for GB) would put a country no relying party knows into a certificate.
_ISO_3166_CODES = """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW
    """
ISO_3166_COUNTRIES = frozenset(_ISO_3166_CODES.split())


def serial_number_attribute(value: str) -> x509.NameAttribute[str]:
    """The subject serialNumber attribute holding a device id.

    X.520 types serialNumber as PrintableString, which cannot hold `_`; such an id goes in a
    UTF8String instead (OpenSSL, cryptography and TLS stacks read it back unchanged), and
    every other id keeps the PrintableString the schema asks for.
    """
    asn1_type = _ASN1Type.PrintableString if _PRINTABLE.fullmatch(value) else _ASN1Type.UTF8String
    return x509.NameAttribute(NameOID.SERIAL_NUMBER, value, _type=asn1_type)


def check_device_id(device_id: str) -> str:
    if not DEVICE_ID_PATTERN.fullmatch(device_id):
        raise UnsupportedParameter(
            f"device id {quote(device_id)} is not 1-64 characters of A-Z a-z 0-9 . _ -"
        )
    return device_id


@dataclass(frozen=True)
class SubjectFields:
    """The optional subject attributes a request or a policy supplies."""

    organization: str | None = None
    organizational_unit: str | None = None
    locality: str | None = None
    country: str | None = None
    email: str | None = None

    def __post_init__(self) -> None:
        if self.email is not None and not (self.email.isascii() and "@" in self.email):
            # It goes in an IA5String emailAddress and an rfc822Name: ASCII only.
            raise UnsupportedParameter(
                f"e-mail {quote(self.email)} is not an ASCII address such as ops@example.com"
            )
        if self.country is not None and not (
            _COUNTRY.fullmatch(self.country) and self.country in ISO_3166_COUNTRIES
        ):
            raise UnsupportedParameter(
                f"country {quote(self.country, limit=40)} is not an assigned two-letter "
                "ISO 3166 code such as SE"
            )

    def merged_over(self, defaults: SubjectFields) -> SubjectFields:
        """These fields, with absent ones taken from defaults."""
        return SubjectFields(
            organization=self.organization or defaults.organization,
            organizational_unit=self.organizational_unit or defaults.organizational_unit,
            locality=self.locality or defaults.locality,
            country=self.country or defaults.country,
            email=self.email or defaults.email,
        )


def build_subject(
    common_name: str, fields: SubjectFields, *, serial_number: str | None
) -> x509.Name:
    """C, L, O, OU, CN, serialNumber, emailAddress, in the conventional big-endian order."""
    attributes: list[x509.NameAttribute[str]] = []
    if fields.country:
        attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, fields.country))
    if fields.locality:
        attributes.append(x509.NameAttribute(NameOID.LOCALITY_NAME, fields.locality))
    if fields.organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, fields.organization))
    if fields.organizational_unit:
        attributes.append(
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, fields.organizational_unit)
        )
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    if serial_number:
        attributes.append(serial_number_attribute(serial_number))
    if fields.email:
        attributes.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, fields.email))
    return x509.Name(attributes)


def device_id_of(certificate: x509.Certificate) -> str | None:
    """The device id a certificate names: subject serialNumber, else CN."""
    for oid in (NameOID.SERIAL_NUMBER, NameOID.COMMON_NAME):
        values = certificate.subject.get_attributes_for_oid(oid)
        if values:
            value = values[0].value
            return value if isinstance(value, str) else None
    return None
