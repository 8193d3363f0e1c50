//! The y-protocols wire format (what y-websocket speaks): sync step 1 / step 2 / update and
//! awareness messages, v1 encoding, through `yrs`'s own encoder.

use bytes::Bytes;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::StateVector;

/// A sync `update` message carrying a stored update.
pub fn update_message(update: &[u8]) -> Bytes {
    Message::Sync(SyncMessage::Update(update.to_vec()))
        .encode_v1()
        .into()
}

/// Sync step 1: the server's state vector (the client answers with what the server lacks).
pub fn step1(state_vector: &[u8]) -> Option<Bytes> {
    let sv = StateVector::decode_v1(state_vector).ok()?;
    Some(Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1().into())
}

/// Sync step 2: what the client lacks.
pub fn step2(update: Vec<u8>) -> Bytes {
    Message::Sync(SyncMessage::SyncStep2(update))
        .encode_v1()
        .into()
}

/// A refusal (y-protocols' auth message, "permission denied").
pub fn denied(reason: &str) -> Bytes {
    Message::Auth(Some(reason.to_owned())).encode_v1().into()
}

/// A client message, decoded.
pub fn decode(bytes: &[u8]) -> Result<Message, String> {
    Message::decode_v1(bytes).map_err(|e| e.to_string())
}

/// An awareness message's raw bytes as they travel in `doc.awareness` frames (base64 of the
/// awareness update, v1).
pub fn awareness_bytes(msg: &Message) -> Option<Vec<u8>> {
    match msg {
        Message::Awareness(u) => Some(u.encode_v1()),
        _ => None,
    }
}

/// The document and binary awareness message of a `doc.awareness` signal frame.
pub fn awareness_of(frame: &str) -> Option<(String, Bytes)> {
    let v: serde_json::Value = serde_json::from_str(frame).ok()?;
    if v.get("type")?.as_str()? != "doc.awareness" {
        return None;
    }
    let doc = v.get("doc")?.as_str()?.to_owned();
    let update = super::frames::unb64(v.get("update")?.as_str()?).ok()?;
    // The awareness message is its tag (1) and the update as a length-prefixed buffer.
    let mut out = Vec::with_capacity(update.len() + 6);
    out.push(yrs::sync::protocol::MSG_AWARENESS);
    let mut n = update.len();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    }
    out.extend_from_slice(&update);
    Some((doc, out.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{Doc, GetString, Text, Transact};

    #[test]
    fn messages_round_trip_through_the_decoder() {
        let d = Doc::new();
        let t = d.get_or_insert_text("t");
        let mut txn = d.transact_mut();
        t.insert(&mut txn, 0, "héllo 👋");
        let u = txn.encode_update_v1();
        drop(txn);
        let m = decode(&update_message(&u)).unwrap();
        let Message::Sync(SyncMessage::Update(back)) = m else {
            panic!("not an update: {m:?}")
        };
        let d2 = Doc::new();
        let t2 = d2.get_or_insert_text("t");
        d2.transact_mut()
            .apply_update(yrs::Update::decode_v1(&back).unwrap())
            .unwrap();
        assert_eq!(t2.get_string(&d2.transact()), "héllo 👋");
        assert!(decode(&[]).is_err());
    }
}
