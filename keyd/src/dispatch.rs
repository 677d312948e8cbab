//! Requests to service calls: decode the body, check the peer's groups, call, encode the answer.
//! The same function serves the socket, the tests and the fuzz target.

use keyd_proto::codec::Writer;
use keyd_proto::message::{self as m, Group, Message, Operation};
use keyd_proto::{DecodeError, Opcode, PROTOCOL_VERSION, Status};

use crate::{Error, Service};

/// Answers one request from a peer allowed `groups`. Never panics on any input.
pub fn handle(service: &Service, groups: u32, opcode: Opcode, body: &[u8]) -> (Status, Vec<u8>) {
    let mut out = Vec::new();
    let status = handle_into(service, groups, opcode, body, &mut out);
    (status, out)
}

/// As [`handle`], appending the answer's body to `out` (nothing is appended on failure).
pub(crate) fn handle_into(
    service: &Service,
    groups: u32,
    opcode: Opcode,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Status {
    let Some(group) = opcode.group() else {
        return Status::UNSUPPORTED;
    };
    if groups & group.bit() == 0 {
        return Status::FORBIDDEN;
    }
    match route(service, groups, opcode, body, out) {
        Ok(()) => Status::OK,
        Err(e) => {
            tracing::debug!(opcode = opcode.0, error = %e, "request refused");
            e.status()
        }
    }
}

/// True for operations that may block on the HSM or the store for long (key creation, exports,
/// ceremonies); the server runs them off the I/O threads.
pub(crate) fn is_slow(opcode: Opcode) -> bool {
    matches!(opcode.group(), Some(Group::Devices | Group::Admin))
}

fn call<O: Operation>(
    body: &[u8],
    out: &mut Vec<u8>,
    f: impl FnOnce(&O) -> Result<O::Response, Error>,
) -> Result<(), Error> {
    answer(O::decode(body), out, f)
}

/// Calls `f` on a decoded request (an owned message, or the view the hot operations are read
/// as in place) and appends its answer.
fn answer<R, A: Message>(
    request: Result<R, DecodeError>,
    out: &mut Vec<u8>,
    f: impl FnOnce(&R) -> Result<A, Error>,
) -> Result<(), Error> {
    let request = request.map_err(|e| Error::BadRequest(e.to_string()))?;
    let response = f(&request)?;
    let mut w = Writer::from_vec(std::mem::take(out));
    response.encode(&mut w);
    *out = w.into_inner();
    Ok(())
}

fn route(
    service: &Service,
    groups: u32,
    opcode: Opcode,
    body: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    match opcode {
        o if o == m::Hello::OPCODE => call::<m::Hello>(body, out, |_| {
            Ok(m::HelloResponse {
                server_version: PROTOCOL_VERSION,
                groups,
            })
        }),
        o if o == m::Ping::OPCODE => call::<m::Ping>(body, out, |_| Ok(m::Empty {})),
        o if o == m::DeviceCreate::OPCODE => call(body, out, |r| service.device_create(r)),
        o if o == m::IdentityRotate::OPCODE => call(body, out, |r| service.identity_rotate(r)),
        o if o == m::KeySetRevoke::OPCODE => call(body, out, |r| service.key_set_revoke(r)),
        o if o == m::IdentityRevoke::OPCODE => call(body, out, |r| service.identity_revoke(r)),
        o if o == m::EnvelopeSealChunks::OPCODE => {
            call(body, out, |r| service.envelope_seal_chunks(r))
        }
        o if o == m::EnvelopeOpenChunks::OPCODE => {
            call(body, out, |r| service.envelope_open_chunks(r))
        }
        o if o == m::KeySetCreate::OPCODE => call(body, out, |r| service.key_set_create(r)),
        o if o == m::KeySetExport::OPCODE => call(body, out, |r| service.key_set_export(r)),
        o if o == m::AttestVerify::OPCODE => call(body, out, |r| service.attest_verify(r)),
        o if o == m::MacVerifyBatch::OPCODE => call(body, out, |r| service.mac_verify_batch(r)),
        o if o == m::EnvelopeOpen::OPCODE => call(body, out, |r| service.envelope_open(r)),
        o if o == m::EnvelopeSeal::OPCODE => call(body, out, |r| service.envelope_seal(r)),
        o if o == m::ChargeOpen::OPCODE => answer(m::ChargeOpenView::decode(body), out, |r| {
            service.charge_open(r)
        }),
        o if o == m::ChargeOpenCard::OPCODE => {
            answer(m::ChargeOpenCardView::decode(body), out, |r| {
                service.charge_open_card(r)
            })
        }
        o if o == m::CardDecrypt::OPCODE => call(body, out, |r| service.card_decrypt(r)),
        o if o == m::PanFingerprint::OPCODE => call(body, out, |r| service.pan_fingerprint(r)),
        o if o == m::RequestFingerprint::OPCODE => {
            call(body, out, |r| service.request_fingerprint(r))
        }
        o if o == m::KeyCheck::OPCODE => call(body, out, |r| service.key_check(r)),
        o if o == m::PinTranslate::OPCODE => call(body, out, |r| service.pin_translate(r)),
        o if o == m::RetailMac::OPCODE => call(body, out, |r| service.retail_mac(r)),
        o if o == m::RetailMacVerify::OPCODE => call(body, out, |r| service.retail_mac_verify(r)),
        o if o == m::PvvGenerate::OPCODE => call(body, out, |r| service.pvv_generate(r)),
        o if o == m::PvvVerify::OPCODE => call(body, out, |r| service.pvv_verify(r)),
        o if o == m::PanSeal::OPCODE => call(body, out, |r| service.pan_seal(r)),
        o if o == m::PanOpen::OPCODE => call(body, out, |r| service.pan_open(r)),
        o if o == m::CardDecryptPin::OPCODE => call(body, out, |r| service.card_decrypt_pin(r)),
        o if o == m::AesCmac::OPCODE => call(body, out, |r| service.aes_cmac(r)),
        o if o == m::AesCmacVerify::OPCODE => call(body, out, |r| service.aes_cmac_verify(r)),
        o if o == m::ZoneMacVerifyBatch::OPCODE => {
            call(body, out, |r| service.zone_mac_verify_batch(r))
        }
        o if o == m::WebhookSecretCreate::OPCODE => {
            call(body, out, |r| service.webhook_secret_create(r))
        }
        o if o == m::WebhookSign::OPCODE => call(body, out, |r| service.webhook_sign(r)),
        o if o == m::PasswordMac::OPCODE => call(body, out, |r| service.password_mac(r)),
        o if o == m::ZmkImport::OPCODE => call(body, out, |r| service.zmk_import_remote(r)),
        o if o == m::Tr31Translate::OPCODE => call(body, out, |r| service.tr31_translate(r)),
        o if o == m::Tr31Export::OPCODE => call(body, out, |r| service.tr31_export(r)),
        o if o == m::Tr31Import::OPCODE => call(body, out, |r| service.tr31_import(r)),
        _ => Err(Error::BadRequest("unknown opcode".into())),
    }
}
