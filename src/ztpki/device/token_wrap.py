"""The patent's third unit: the loading station's token generates the device's key and hands it
to the device's token wrapped, so the key is never in the clear outside a token
(``ztpki factory load --keygen station``).

The mechanisms are those SoftHSM 2.6 (and most HSMs) carry, in the standard two-layer form:

1. the device token makes a one-time RSA-2048 transport key pair (session objects) and gives
   out its public half;
2. the station token makes the EC key pair (a session object, sensitive, extractable only
   by wrapping) and a one-time AES-256 key, wraps the private key with CKM_AES_KEY_WRAP_PAD
   (RFC 5649; the token encodes it as PKCS#8 first) and the AES key with CKM_RSA_PKCS_OAEP
   to the device's transport key (SHA-1 and MGF1-SHA-1: SoftHSM's OAEP takes no other);
3. the device token unwraps the AES key, then the private key, as a token object that is
   sensitive and never extractable, and stores the public key beside it.

Every intermediate object is a session object, destroyed before the function returns; the
station keeps nothing. The wrapped bytes exist only in this process's memory, and only
tokens can open them.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import PKCS11Error
from pkcs11.types import UnwrapMixin, WrapMixin
from pkcs11.util.ec import encode_named_curve_parameters

from ztpki.device.token_keys import CURVES, LABEL_PREFIX, TokenDeviceKey, pool_for
from ztpki.errors import UnsupportedParameter
from ztpki.pki.keys import KeySpec
from ztpki.pki.pkcs11_uri import Pkcs11Uri
from ztpki.tokens.token_key import TokenKey

__all__ = ["station_generated_key"]

# python-pkcs11 packs the parameter tuple itself; its stubs only know raw bytes.
_OAEP: Any = (Mechanism.SHA_1, pkcs11.MGF.SHA1, None)
# python-pkcs11 sets every capability attribute on an unwrapped key; a private key has no
# encrypt, verify or wrap attribute, which SoftHSM refuses: leave them out.
_NOT_FOR_PRIVATE = {
    a: pkcs11.DEFAULT for a in (Attribute.ENCRYPT, Attribute.VERIFY, Attribute.WRAP)
}


def station_generated_key(
    station: Pkcs11Uri, device: Pkcs11Uri, device_id: str, spec: KeySpec
) -> TokenDeviceKey:
    """A key generated in the ``station`` token and unwrapped into the ``device`` token."""
    curve = next((name for name, s in CURVES.items() if s is spec), None)
    if curve is None:
        raise UnsupportedParameter(
            f"a device key in a token is ec-p256 or ec-p384, not {spec.value}"
        )
    suffix = os.urandom(6).hex()
    label, key_id = f"{LABEL_PREFIX}{device_id}-{suffix}", bytes.fromhex(suffix)
    with (
        pool_for(device).session(rw=True) as at_device,
        pool_for(station).session(rw=True) as at_station,
    ):
        made: list[pkcs11.Object] = []
        try:
            transport_public, transport = at_device.session.generate_keypair(
                KeyType.RSA,
                2048,
                store=False,
                public_template={Attribute.WRAP: True, Attribute.ENCRYPT: True},
                private_template={Attribute.UNWRAP: True, Attribute.SENSITIVE: True},
            )
            made += [transport_public, transport]
            params = at_station.session.create_domain_parameters(
                KeyType.EC,
                {Attribute.EC_PARAMS: encode_named_curve_parameters(curve)},
                local=True,
            )
            public, private = params.generate_keypair(
                store=False,
                private_template={
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: True,
                    Attribute.SIGN: True,
                },
            )
            session_key = at_station.session.generate_key(
                KeyType.AES,
                256,
                store=False,
                template={Attribute.WRAP: True, Attribute.EXTRACTABLE: True},
            )
            to_device = at_station.session.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.RSA,
                    Attribute.MODULUS: transport_public[Attribute.MODULUS],
                    Attribute.PUBLIC_EXPONENT: transport_public[Attribute.PUBLIC_EXPONENT],
                    Attribute.WRAP: True,
                    Attribute.TOKEN: False,
                }
            )
            made += [public, private, session_key, to_device]
            assert isinstance(session_key, WrapMixin) and isinstance(to_device, WrapMixin)
            assert isinstance(transport, UnwrapMixin)
            wrapped_key = session_key.wrap_key(private, mechanism=Mechanism.AES_KEY_WRAP_PAD)
            wrapped_session_key = to_device.wrap_key(
                session_key, mechanism=Mechanism.RSA_PKCS_OAEP, mechanism_param=_OAEP
            )
            opened = transport.unwrap_key(
                ObjectClass.SECRET_KEY,
                KeyType.AES,
                wrapped_session_key,
                mechanism=Mechanism.RSA_PKCS_OAEP,
                mechanism_param=_OAEP,
                store=False,
                template={Attribute.UNWRAP: True},
            )
            made.append(opened)
            assert isinstance(opened, UnwrapMixin)
            opened.unwrap_key(
                ObjectClass.PRIVATE_KEY,
                KeyType.EC,
                wrapped_key,
                label=label,
                id=key_id,
                mechanism=Mechanism.AES_KEY_WRAP_PAD,
                store=True,
                capabilities=pkcs11.MechanismFlag.SIGN,
                template={
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    **_NOT_FOR_PRIVATE,
                },
            )
            at_device.session.create_object(
                {
                    Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                    Attribute.KEY_TYPE: KeyType.EC,
                    Attribute.EC_PARAMS: public[Attribute.EC_PARAMS],
                    Attribute.EC_POINT: public[Attribute.EC_POINT],
                    Attribute.LABEL: label,
                    Attribute.ID: key_id,
                    Attribute.VERIFY: True,
                    Attribute.TOKEN: True,
                }
            )
        finally:
            for obj in made:
                with contextlib.suppress(PKCS11Error):
                    obj.destroy()
    uri = Pkcs11Uri(**{**device.with_object(label).__dict__, "id": key_id})
    return TokenDeviceKey(TokenKey(pool_for(device), uri))
