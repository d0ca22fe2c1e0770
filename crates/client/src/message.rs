//! The message plaintext: the `waE2E.Message` protobuf (the fields this client sends and reads)
//! followed by v2 padding, 1-15 bytes each equal to the pad length.

use prost::Message as _;

use crate::media::MediaKind;

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
    #[prost(message, optional, tag = "8")]
    pub audio_message: Option<AudioMessage>,
    #[prost(message, optional, tag = "9")]
    pub video_message: Option<VideoMessage>,
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

/// `waE2E.Message.AudioMessage`: audio files, and voice notes (`ptt`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AudioMessage {
    #[prost(string, optional, tag = "1")]
    pub url: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub mimetype: Option<String>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub file_sha256: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "4")]
    pub file_length: Option<u64>,
    #[prost(uint32, optional, tag = "5")]
    pub seconds: Option<u32>,
    /// Push to talk: a recorded voice message rather than an audio file.
    #[prost(bool, optional, tag = "6")]
    pub ptt: Option<bool>,
    #[prost(bytes = "vec", optional, tag = "7")]
    pub media_key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "8")]
    pub file_enc_sha256: Option<Vec<u8>>,
    #[prost(string, optional, tag = "9")]
    pub direct_path: Option<String>,
    #[prost(int64, optional, tag = "10")]
    pub media_key_timestamp: Option<i64>,
}

/// `waE2E.Message.VideoMessage`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct VideoMessage {
    #[prost(string, optional, tag = "1")]
    pub url: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub mimetype: Option<String>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub file_sha256: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "4")]
    pub file_length: Option<u64>,
    #[prost(uint32, optional, tag = "5")]
    pub seconds: Option<u32>,
    #[prost(bytes = "vec", optional, tag = "6")]
    pub media_key: Option<Vec<u8>>,
    #[prost(string, optional, tag = "7")]
    pub caption: Option<String>,
    #[prost(bytes = "vec", optional, tag = "11")]
    pub file_enc_sha256: Option<Vec<u8>>,
    #[prost(string, optional, tag = "13")]
    pub direct_path: Option<String>,
    #[prost(int64, optional, tag = "14")]
    pub media_key_timestamp: Option<i64>,
}

/// A media reference as a message carries it, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRef {
    pub kind: MediaKind,
    pub mimetype: String,
    pub direct_path: String,
    pub media_key: Vec<u8>,
    pub file_sha256: Vec<u8>,
    pub file_enc_sha256: Vec<u8>,
    pub file_length: u64,
    /// Caption (images, videos) or file name (documents); audio carries none.
    pub label: Option<String>,
    /// Playing time (voice notes, audio, video), when the sender gave it.
    pub seconds: Option<u32>,
}

impl MediaRef {
    /// One line for the user: `[voice note 3s]`, `[video 12s] caption`, `[image/png] caption`.
    pub fn summary(&self) -> String {
        let secs = self.seconds.map(|s| format!(" {s}s")).unwrap_or_default();
        let head = match self.kind {
            MediaKind::VoiceNote => format!("[voice note{secs}]"),
            MediaKind::Video => format!("[video{secs}]"),
            MediaKind::Audio => format!("[audio{secs}]"),
            _ => format!("[{}]", self.mimetype),
        };
        match &self.label {
            Some(l) => format!("{head} {l}"),
            None => head,
        }
    }

    /// A file name for saving it: the label when it is one, else `id` with the type's extension.
    pub fn file_name(&self, id: &str) -> String {
        if let Some(l) = self.label.as_deref().filter(|l| self.kind == MediaKind::Document && is_plain_name(l)) {
            return l.to_owned();
        }
        let essence = self.mimetype.split(';').next().unwrap_or_default().trim();
        let ext = match essence {
            "image/jpeg" => "jpg",
            "image/png" => "png",
            "image/webp" => "webp",
            "image/gif" => "gif",
            "video/mp4" => "mp4",
            "audio/ogg" => "ogg",
            "audio/mpeg" => "mp3",
            "audio/mp4" => "m4a",
            "application/pdf" => "pdf",
            "text/plain" => "txt",
            _ => "bin",
        };
        let stem: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
        format!("{stem}.{ext}")
    }
}

/// A file name with no directory part, not hidden and not `..`.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\', '\0'])
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
    #[error("message protobuf is invalid")]
    Protobuf(#[source] prost::DecodeError),
}

impl Message {
    pub fn text(text: &str) -> Message {
        Message { conversation: Some(text.to_owned()), ..Default::default() }
    }

    pub fn media(media: &MediaRef) -> Message {
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
            MediaKind::Video => Message {
                video_message: Some(VideoMessage {
                    mimetype: Some(media.mimetype.clone()),
                    file_sha256: Some(media.file_sha256.clone()),
                    file_length: Some(media.file_length),
                    seconds: media.seconds,
                    media_key: Some(media.media_key.clone()),
                    caption: media.label.clone(),
                    file_enc_sha256: Some(media.file_enc_sha256.clone()),
                    direct_path: Some(media.direct_path.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            MediaKind::Audio | MediaKind::VoiceNote => Message {
                audio_message: Some(AudioMessage {
                    mimetype: Some(media.mimetype.clone()),
                    file_sha256: Some(media.file_sha256.clone()),
                    file_length: Some(media.file_length),
                    seconds: media.seconds,
                    ptt: Some(media.kind == MediaKind::VoiceNote),
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
        if let Some(t) = &self.conversation {
            return Content::Text(t.clone());
        }
        if let Some(t) = self.extended_text_message.as_ref().and_then(|e| e.text.clone()) {
            return Content::Text(t);
        }
        let media = if let Some(i) = &self.image_message {
            Fields {
                kind: MediaKind::Image,
                mimetype: &i.mimetype,
                direct_path: &i.direct_path,
                media_key: &i.media_key,
                file_sha256: &i.file_sha256,
                file_enc_sha256: &i.file_enc_sha256,
                file_length: i.file_length,
                label: &i.caption,
                seconds: None,
            }
        } else if let Some(v) = &self.video_message {
            Fields {
                kind: MediaKind::Video,
                mimetype: &v.mimetype,
                direct_path: &v.direct_path,
                media_key: &v.media_key,
                file_sha256: &v.file_sha256,
                file_enc_sha256: &v.file_enc_sha256,
                file_length: v.file_length,
                label: &v.caption,
                seconds: v.seconds,
            }
        } else if let Some(a) = &self.audio_message {
            Fields {
                kind: if a.ptt == Some(true) { MediaKind::VoiceNote } else { MediaKind::Audio },
                mimetype: &a.mimetype,
                direct_path: &a.direct_path,
                media_key: &a.media_key,
                file_sha256: &a.file_sha256,
                file_enc_sha256: &a.file_enc_sha256,
                file_length: a.file_length,
                label: &None,
                seconds: a.seconds,
            }
        } else if let Some(d) = &self.document_message {
            Fields {
                kind: MediaKind::Document,
                mimetype: &d.mimetype,
                direct_path: &d.direct_path,
                media_key: &d.media_key,
                file_sha256: &d.file_sha256,
                file_enc_sha256: &d.file_enc_sha256,
                file_length: d.file_length,
                label: &d.file_name,
                seconds: None,
            }
        } else {
            return Content::Unsupported;
        };
        media.into_content()
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
        Message::decode(&plain[..plain.len() - n]).map_err(MessageError::Protobuf)
    }
}

/// The fields every media message kind carries, borrowed from whichever one it is.
struct Fields<'a> {
    kind: MediaKind,
    mimetype: &'a Option<String>,
    direct_path: &'a Option<String>,
    media_key: &'a Option<Vec<u8>>,
    file_sha256: &'a Option<Vec<u8>>,
    file_enc_sha256: &'a Option<Vec<u8>>,
    file_length: Option<u64>,
    label: &'a Option<String>,
    seconds: Option<u32>,
}

impl Fields<'_> {
    /// A media message without what is needed to fetch and check its file is not shown.
    fn into_content(self) -> Content {
        match (self.direct_path, self.media_key, self.file_sha256, self.file_enc_sha256) {
            (Some(p), Some(k), Some(s), Some(e)) => Content::Media(MediaRef {
                kind: self.kind,
                mimetype: self.mimetype.clone().unwrap_or_else(|| "application/octet-stream".into()),
                direct_path: p.clone(),
                media_key: k.clone(),
                file_sha256: s.clone(),
                file_enc_sha256: e.clone(),
                file_length: self.file_length.unwrap_or(0),
                label: self.label.clone(),
                seconds: self.seconds,
            }),
            _ => Content::Unsupported,
        }
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

    fn media(kind: MediaKind, mimetype: &str, label: Option<&str>, seconds: Option<u32>) -> MediaRef {
        MediaRef {
            kind,
            mimetype: mimetype.into(),
            direct_path: "/v/t62.7118-24/x".into(),
            media_key: vec![1; 32],
            file_sha256: vec![2; 32],
            file_enc_sha256: vec![3; 32],
            file_length: 4242,
            label: label.map(Into::into),
            seconds,
        }
    }

    #[test]
    fn voice_notes_audio_and_video_use_whatsapps_fields() {
        let ptt = media(MediaKind::VoiceNote, crate::media::VOICE_NOTE_MIMETYPE, None, Some(3));
        let bytes = Message::media(&ptt).encode_to_vec();
        // Message field 8 (audioMessage), length-delimited: tag byte 0x42.
        assert_eq!(bytes[0], 0x42);
        let audio = Message::decode(&bytes[..]).unwrap().audio_message.unwrap();
        assert_eq!((audio.ptt, audio.seconds, audio.file_length), (Some(true), Some(3), Some(4242)));
        assert_eq!(audio.mimetype.as_deref(), Some("audio/ogg; codecs=opus"));
        // Inside: seconds is field 5 (varint, 0x28), ptt field 6 (0x30), mediaKey field 7 (0x3a).
        let inner = audio.encode_to_vec();
        assert!(inner.windows(2).any(|w| w == [0x28, 3]) && inner.windows(2).any(|w| w == [0x30, 1]));
        assert!(inner.windows(2).any(|w| w == [0x3a, 32]));

        let video = media(MediaKind::Video, "video/mp4", Some("the view"), Some(12));
        let bytes = Message::media(&video).encode_to_vec();
        // Message field 9 (videoMessage): 0x4a; its caption is field 7 (0x3a), directPath 13 (0x6a).
        assert_eq!(bytes[0], 0x4a);
        let v = Message::decode(&bytes[..]).unwrap().video_message.unwrap();
        assert_eq!((v.caption.as_deref(), v.seconds), (Some("the view"), Some(12)));
        let inner = v.encode_to_vec();
        assert!(inner.windows(2).any(|w| w == [0x6a, 16]), "directPath as field 13");

        // Each reads back as what was sent; an audio file without ptt is not a voice note.
        for m in [ptt, video, media(MediaKind::Audio, "audio/mpeg", None, None)] {
            assert_eq!(Message::media(&m).content(), Content::Media(m.clone()));
        }
    }

    #[test]
    fn saved_media_gets_a_safe_name() {
        let doc = |label: &str| media(MediaKind::Document, "application/pdf", Some(label), None);
        assert_eq!(doc("q3.pdf").file_name("3EB0AA"), "q3.pdf");
        for hostile in ["../../etc/passwd", "..", ".bashrc", "a/b", "a\\b", ""] {
            assert_eq!(doc(hostile).file_name("3EB0AA"), "3EB0AA.pdf", "{hostile:?}");
        }
        let ptt = media(MediaKind::VoiceNote, "audio/ogg; codecs=opus", None, Some(3));
        assert_eq!(ptt.file_name("3EB0/../X"), "3EB0X.ogg");
        assert_eq!(media(MediaKind::Video, "video/mp4", Some("caption"), None).file_name("ID"), "ID.mp4");
        assert_eq!(ptt.summary(), "[voice note 3s]");
        assert_eq!(media(MediaKind::Video, "video/mp4", None, None).summary(), "[video]");
        assert_eq!(doc("q3.pdf").summary(), "[application/pdf] q3.pdf");
    }
}
