//! The message plaintext: the `waE2E.Message` protobuf (the fields this client sends and reads)
//! followed by v2 padding, 1-15 bytes each equal to the pad length.

use prost::Message as _;

/// `waE2E.Message`, the subset used here (field numbers as in WhatsApp's schema).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(string, optional, tag = "1")]
    pub conversation: Option<String>,
    #[prost(message, optional, tag = "3")]
    pub image_message: Option<ImageMessage>,
    #[prost(message, optional, tag = "6")]
    pub extended_text_message: Option<ExtendedTextMessage>,
    #[prost(message, optional, tag = "7")]
    pub document_message: Option<DocumentMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ExtendedTextMessage {
    #[prost(string, optional, tag = "1")]
    pub text: Option<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ImageMessage {
    #[prost(string, optional, tag = "1")]
    pub url: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub mimetype: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub caption: Option<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub file_sha256: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "5")]
    pub file_length: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub media_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "9")]
    pub file_enc_sha256: Option<Vec<u8>>,
    #[prost(string, optional, tag = "11")]
    pub direct_path: Option<String>,
    #[prost(int64, optional, tag = "12")]
    pub media_key_timestamp: Option<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DocumentMessage {
    #[prost(string, optional, tag = "1")]
    pub url: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub mimetype: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub title: Option<String>,
    #[prost(bytes = "vec", optional, tag = "4")]
    pub file_sha256: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "5")]
    pub file_length: Option<u64>,
    #[prost(bytes = "vec", optional, tag = "7")]
    pub media_key: Option<Vec<u8>>,
    #[prost(string, optional, tag = "8")]
    pub file_name: Option<String>,
    #[prost(bytes = "vec", optional, tag = "9")]
    pub file_enc_sha256: Option<Vec<u8>>,
    #[prost(string, optional, tag = "10")]
    pub direct_path: Option<String>,
}

/// A media reference as a message carries it, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub kind: crate::media::MediaKind,
    pub mimetype: String,
    pub direct_path: String,
    pub media_key: Vec<u8>,
    pub file_sha256: Vec<u8>,
    pub file_enc_sha256: Vec<u8>,
    pub file_length: u64,
    /// Caption (images) or file name (documents).
    pub label: Option<String>,
}

/// What a message says, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Text(String),
    Media(MediaRef),
    /// A message kind this client does not show.
    Unsupported,
}

/// The longest random pad a reader accepts (Baileys 7 writes up to 16 bytes).
pub const MAX_PAD: usize = 16;

/// Why a plaintext could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    #[error("message padding is invalid")]
    Padding,
    #[error("message protobuf is invalid: {0}")]
    Protobuf(String),
}

impl Message {
    pub fn text(text: &str) -> Message {
        Message { conversation: Some(text.to_owned()), ..Default::default() }
    }

    pub fn media(media: &MediaRef) -> Message {
        use crate::media::MediaKind;
        match media.kind {
            MediaKind::Image => Message {
                image_message: Some(ImageMessage {
                    mimetype: Some(media.mimetype.clone()),
                    caption: media.label.clone(),
                    file_sha256: Some(media.file_sha256.clone()),
                    file_length: Some(media.file_length),
                    media_key: Some(media.media_key.clone()),
                    file_enc_sha256: Some(media.file_enc_sha256.clone()),
                    direct_path: Some(media.direct_path.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            MediaKind::Document => Message {
                document_message: Some(DocumentMessage {
                    mimetype: Some(media.mimetype.clone()),
                    file_sha256: Some(media.file_sha256.clone()),
                    file_length: Some(media.file_length),
                    media_key: Some(media.media_key.clone()),
                    file_name: media.label.clone(),
                    file_enc_sha256: Some(media.file_enc_sha256.clone()),
                    direct_path: Some(media.direct_path.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        }
    }

    /// What the user sees.
    pub fn content(&self) -> Content {
        use crate::media::MediaKind;
        if let Some(t) = &self.conversation {
            return Content::Text(t.clone());
        }
        if let Some(t) = self.extended_text_message.as_ref().and_then(|e| e.text.clone()) {
            return Content::Text(t);
        }
        if let Some(i) = &self.image_message {
            return media_ref(
                MediaKind::Image,
                &i.mimetype,
                &i.direct_path,
                &i.media_key,
                &i.file_sha256,
                &i.file_enc_sha256,
                i.file_length,
                &i.caption,
            );
        }
        if let Some(d) = &self.document_message {
            return media_ref(
                MediaKind::Document,
                &d.mimetype,
                &d.direct_path,
                &d.media_key,
                &d.file_sha256,
                &d.file_enc_sha256,
                d.file_length,
                &d.file_name,
            );
        }
        Content::Unsupported
    }

    /// The padded plaintext that goes into Signal.
    pub fn to_plaintext(&self) -> Vec<u8> {
        let mut out = self.encode_to_vec();
        let pad = (crate::store::random32()[0] & 0x0f).max(1);
        out.extend(std::iter::repeat_n(pad, pad as usize));
        out
    }

    /// Reads a padded plaintext. The pad is 1 to [`MAX_PAD`] bytes, each equal to its length:
    /// whatsmeow writes 1-15, Baileys 7 writes 1-16 (`(random & 0x0f) + 1`), so 16 is accepted.
    pub fn from_plaintext(plain: &[u8]) -> Result<Message, MessageError> {
        let &pad = plain.last().ok_or(MessageError::Padding)?;
        let n = pad as usize;
        if n == 0 || n > MAX_PAD || n > plain.len() || plain[plain.len() - n..].iter().any(|&b| b != pad) {
            return Err(MessageError::Padding);
        }
        Message::decode(&plain[..plain.len() - n]).map_err(|e| MessageError::Protobuf(e.to_string()))
    }
}

#[allow(clippy::too_many_arguments)]
fn media_ref(
    kind: crate::media::MediaKind,
    mimetype: &Option<String>,
    direct_path: &Option<String>,
    key: &Option<Vec<u8>>,
    sha: &Option<Vec<u8>>,
    enc_sha: &Option<Vec<u8>>,
    length: Option<u64>,
    label: &Option<String>,
) -> Content {
    match (direct_path, key, sha, enc_sha) {
        (Some(p), Some(k), Some(s), Some(e)) => Content::Media(MediaRef {
            kind,
            mimetype: mimetype.clone().unwrap_or_else(|| "application/octet-stream".into()),
            direct_path: p.clone(),
            media_key: k.clone(),
            file_sha256: s.clone(),
            file_enc_sha256: e.clone(),
            file_length: length.unwrap_or(0),
            label: label.clone(),
        }),
        _ => Content::Unsupported,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_round_trips_and_bad_padding_is_refused() {
        for _ in 0..50 {
            let m = Message::text("hi there");
            let p = m.to_plaintext();
            let pad = *p.last().unwrap() as usize;
            assert!((1..=15).contains(&pad));
            assert_eq!(Message::from_plaintext(&p).unwrap(), m);
        }
        assert_eq!(Message::from_plaintext(&[]), Err(MessageError::Padding));
        assert_eq!(Message::from_plaintext(&[0x0a, 0x01, 0x41, 0]), Err(MessageError::Padding));
        assert_eq!(Message::from_plaintext(&[0x0a, 0x01, 0x41, 2, 3]), Err(MessageError::Padding));
        assert!(matches!(Message::from_plaintext(&[0xff, 1]), Err(MessageError::Protobuf(_))));
    }

    #[test]
    fn a_sixteen_byte_pad_as_baileys_writes_it_is_read() {
        // Issue 13 conformance: Baileys 7 pads with `(random & 0x0f) + 1` bytes, so 1 in 16 of its
        // messages ends in sixteen 0x10 bytes; refusing them lost those messages.
        let m = Message::text("hello Partner, from Baileys");
        let mut p = m.to_plaintext();
        let pad = *p.last().unwrap() as usize;
        p.truncate(p.len() - pad);
        let body = p.len();
        p.extend([16u8; 16]);
        assert_eq!(Message::from_plaintext(&p).unwrap(), m);
        p.truncate(body);
        p.extend([17u8; 17]);
        assert_eq!(Message::from_plaintext(&p), Err(MessageError::Padding));
    }

    #[test]
    fn known_bytes_for_a_text_message() {
        // Field 1 (conversation), length 2, "hi": the bytes WhatsApp clients read.
        assert_eq!(Message::text("hi").encode_to_vec(), [0x0a, 0x02, b'h', b'i']);
        let ext = Message {
            extended_text_message: Some(ExtendedTextMessage { text: Some("yo".into()) }),
            ..Default::default()
        };
        assert_eq!(ext.encode_to_vec(), [0x32, 0x04, 0x0a, 0x02, b'y', b'o']);
        assert_eq!(Message::decode(&ext.encode_to_vec()[..]).unwrap().content(), Content::Text("yo".into()));
    }
}
