//! Media encryption as WhatsApp clients do it: a random 32-byte media key expanded with
//! HKDF-SHA256 (no salt, a per-kind info string) into IV, AES-256-CBC key, MAC key and ref key;
//! the upload body is `AES-256-CBC(PKCS#7)(plaintext) || HMAC-SHA256(mac key, iv || ct)[..10]`.
//! Receiving checks the encrypted hash, the MAC, then the plaintext hash, and refuses on any
//! mismatch.

use aws_lc_rs::cipher::{
    AES_256, DecryptionContext, EncryptionContext, PaddedBlockDecryptingKey, PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::{constant_time, digest, hkdf, hmac};

const MAC_LEN: usize = 10;

/// The media kinds this client sends and reads: what WhatsApp's third-party chats carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MediaKind {
    Image,
    Video,
    /// An audio file (`audioMessage`, `ptt` false).
    Audio,
    /// A recorded voice message (`audioMessage` with `ptt` true, Ogg/Opus).
    VoiceNote,
    Document,
}

/// The MIME type WhatsApp clients record voice notes in.
pub const VOICE_NOTE_MIMETYPE: &str = "audio/ogg; codecs=opus";

impl MediaKind {
    /// The HKDF info string for this kind (a voice note is audio: WhatsApp's `ptt` maps to
    /// `"WhatsApp Audio Keys"`).
    pub fn info(self) -> &'static [u8] {
        match self {
            MediaKind::Image => b"WhatsApp Image Keys",
            MediaKind::Video => b"WhatsApp Video Keys",
            MediaKind::Audio | MediaKind::VoiceNote => b"WhatsApp Audio Keys",
            MediaKind::Document => b"WhatsApp Document Keys",
        }
    }

    /// The upload path segment (`/mms/{type}`).
    pub fn mms_type(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Audio | MediaKind::VoiceNote => "audio",
            MediaKind::Document => "document",
        }
    }

    /// The `mediatype` attribute on the message's `<enc>`: as [`mms_type`](Self::mms_type),
    /// except that a voice note is `ptt` (push to talk).
    pub fn enc_mediatype(self) -> &'static str {
        match self {
            MediaKind::VoiceNote => "ptt",
            other => other.mms_type(),
        }
    }

    /// Images, videos and audio by MIME type; everything else travels as a document. Voice
    /// notes are sent as such explicitly ([`crate::Client::send_voice_note`]).
    pub fn for_file(mimetype: &str) -> MediaKind {
        match mimetype.split('/').next().unwrap_or_default() {
            "image" => MediaKind::Image,
            "video" => MediaKind::Video,
            "audio" => MediaKind::Audio,
            _ => MediaKind::Document,
        }
    }
}

/// The result of encrypting a file for upload.
#[derive(Debug, Clone)]
pub struct Encrypted {
    pub media_key: [u8; 32],
    /// What to upload.
    pub body: Vec<u8>,
    pub file_sha256: [u8; 32],
    pub file_enc_sha256: [u8; 32],
    pub file_length: u64,
}

/// Why media could not be decrypted. Each names the check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    #[error("media key must be 32 bytes, got {0}")]
    KeyLength(usize),
    #[error("downloaded file is too short to be encrypted media ({0} bytes)")]
    TooShort(usize),
    #[error("downloaded file's SHA-256 does not match the message (corrupted or substituted)")]
    EncHash,
    #[error("media MAC does not verify (wrong key or tampered file)")]
    Mac,
    #[error("media does not decrypt (bad padding)")]
    Cipher,
    #[error("decrypted file's SHA-256 does not match the message")]
    PlainHash,
}

struct Keys {
    iv: [u8; 16],
    cipher: [u8; 32],
    mac: [u8; 32],
}

struct Len112;

impl hkdf::KeyType for Len112 {
    fn len(&self) -> usize {
        112
    }
}

fn expand(media_key: &[u8; 32], kind: MediaKind) -> Keys {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &[]).extract(media_key);
    let mut out = [0u8; 112];
    // 112 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let info = [kind.info()];
    prk.expand(&info, Len112).and_then(|okm| okm.fill(&mut out)).expect("HKDF length within limits");
    let mut k = Keys { iv: [0; 16], cipher: [0; 32], mac: [0; 32] };
    k.iv.copy_from_slice(&out[..16]);
    k.cipher.copy_from_slice(&out[16..48]);
    k.mac.copy_from_slice(&out[48..80]);
    k
}

fn mac(keys: &Keys, ciphertext: &[u8]) -> [u8; MAC_LEN] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &keys.mac);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(&keys.iv);
    ctx.update(ciphertext);
    let tag = ctx.sign();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    out
}

fn sha256(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, b).as_ref());
    out
}

/// Encrypts `plain` with a fresh media key.
pub fn encrypt(plain: &[u8], kind: MediaKind) -> Encrypted {
    encrypt_with_key(plain, kind, crate::store::random32())
}

fn encrypt_with_key(plain: &[u8], kind: MediaKind, media_key: [u8; 32]) -> Encrypted {
    let keys = expand(&media_key, kind);
    // A 32-byte key and a 16-byte IV are always valid for AES-256-CBC.
    let key = PaddedBlockEncryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, &keys.cipher).expect("AES-256 key"))
        .expect("CBC key");
    let mut body = plain.to_vec();
    key.less_safe_encrypt(&mut body, EncryptionContext::Iv128(keys.iv.into())).expect("CBC encrypt");
    let tag = mac(&keys, &body);
    body.extend_from_slice(&tag);
    Encrypted {
        media_key,
        file_sha256: sha256(plain),
        file_enc_sha256: sha256(&body),
        file_length: plain.len() as u64,
        body,
    }
}

/// Checks and decrypts a downloaded file against the hashes and key the message carried.
pub fn decrypt(
    body: &[u8],
    kind: MediaKind,
    media_key: &[u8],
    file_enc_sha256: &[u8],
    file_sha256: &[u8],
) -> Result<Vec<u8>, MediaError> {
    let media_key: &[u8; 32] = media_key.try_into().map_err(|_| MediaError::KeyLength(media_key.len()))?;
    if body.len() < MAC_LEN + 16 {
        return Err(MediaError::TooShort(body.len()));
    }
    if constant_time::verify_slices_are_equal(&sha256(body), file_enc_sha256).is_err() {
        return Err(MediaError::EncHash);
    }
    let keys = expand(media_key, kind);
    let (ciphertext, tag) = body.split_at(body.len() - MAC_LEN);
    if constant_time::verify_slices_are_equal(&mac(&keys, ciphertext), tag).is_err() {
        return Err(MediaError::Mac);
    }
    let key = PaddedBlockDecryptingKey::cbc_pkcs7(UnboundCipherKey::new(&AES_256, &keys.cipher).expect("AES-256 key"))
        .expect("CBC key");
    let mut buf = ciphertext.to_vec();
    let plain = key.decrypt(&mut buf, DecryptionContext::Iv128(keys.iv.into())).map_err(|_| MediaError::Cipher)?;
    if constant_time::verify_slices_are_equal(&sha256(plain), file_sha256).is_err() {
        return Err(MediaError::PlainHash);
    }
    Ok(plain.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_check_refuses_tampering() {
        let plain: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let e = encrypt(&plain, MediaKind::Image);
        assert_eq!(e.body.len(), 1008 + MAC_LEN, "PKCS#7 pads 1000 to 1008, then the 10-byte MAC");
        let ok = |body: &[u8], kind, key: &[u8], enc: &[u8]| decrypt(body, kind, key, enc, &e.file_sha256);
        assert_eq!(ok(&e.body, MediaKind::Image, &e.media_key, &e.file_enc_sha256).unwrap(), plain);
        // The wrong kind derives other keys: the MAC fails.
        assert_eq!(ok(&e.body, MediaKind::Document, &e.media_key, &e.file_enc_sha256), Err(MediaError::Mac));
        let mut tampered = e.body.clone();
        tampered[3] ^= 1;
        assert_eq!(ok(&tampered, MediaKind::Image, &e.media_key, &e.file_enc_sha256), Err(MediaError::EncHash));
        assert_eq!(ok(&tampered, MediaKind::Image, &e.media_key, &sha256(&tampered)), Err(MediaError::Mac));
        assert_eq!(ok(&e.body[..20], MediaKind::Image, &e.media_key, &[]), Err(MediaError::TooShort(20)));
        assert_eq!(ok(&e.body, MediaKind::Image, &[1, 2], &e.file_enc_sha256), Err(MediaError::KeyLength(2)));
        assert_eq!(
            decrypt(&e.body, MediaKind::Image, &e.media_key, &e.file_enc_sha256, &[0; 32]),
            Err(MediaError::PlainHash)
        );
    }

    #[test]
    fn key_expansion_matches_a_fixed_vector() {
        // HKDF-SHA256(ikm = 32 zero bytes, salt = none, info = "WhatsApp Image Keys"): the first
        // 16 bytes are the IV. Computed independently with Python's hmac/hashlib.
        let keys = expand(&[0u8; 32], MediaKind::Image);
        assert_eq!(hex::encode(keys.iv), IMAGE_IV_FOR_ZERO_KEY);
    }

    const IMAGE_IV_FOR_ZERO_KEY: &str = "a056b2e5cd64d4545d08f2503a042e75";

    #[test]
    fn each_kind_has_whatsapps_info_string_path_and_mediatype() {
        use MediaKind::*;
        let table = [
            (Image, "WhatsApp Image Keys", "image", "image"),
            (Video, "WhatsApp Video Keys", "video", "video"),
            (Audio, "WhatsApp Audio Keys", "audio", "audio"),
            (VoiceNote, "WhatsApp Audio Keys", "audio", "ptt"),
            (Document, "WhatsApp Document Keys", "document", "document"),
        ];
        for (kind, info, path, mediatype) in table {
            assert_eq!((kind.info(), kind.mms_type(), kind.enc_mediatype()), (info.as_bytes(), path, mediatype));
        }
        assert_eq!(MediaKind::for_file("video/mp4"), Video);
        assert_eq!(MediaKind::for_file("audio/mpeg"), Audio);
        assert_eq!(MediaKind::for_file("image/png"), Image);
        assert_eq!(MediaKind::for_file("application/pdf"), Document);
        assert_eq!(MediaKind::for_file("videogame/x"), Document);
    }

    #[test]
    fn audio_and_video_keys_match_fixed_vectors() {
        // HKDF-SHA256(ikm = 32 zero bytes, salt = none, L = 112) per info string, computed
        // independently with Python's hmac/hashlib; iv, cipher key and MAC key are its first 80.
        for (kind, want) in [(MediaKind::Video, VIDEO_OKM_FOR_ZERO_KEY), (MediaKind::Audio, AUDIO_OKM_FOR_ZERO_KEY)] {
            let k = expand(&[0u8; 32], kind);
            let got = [&k.iv[..], &k.cipher[..], &k.mac[..]].concat();
            assert_eq!(hex::encode(got), want[..160], "{kind:?}");
        }
        // A voice note is audio to the key schedule: a ptt's file opens with the Audio keys.
        let e = encrypt(b"OggS voice", MediaKind::VoiceNote);
        assert!(decrypt(&e.body, MediaKind::Audio, &e.media_key, &e.file_enc_sha256, &e.file_sha256).is_ok());
        assert_eq!(
            decrypt(&e.body, MediaKind::Video, &e.media_key, &e.file_enc_sha256, &e.file_sha256),
            Err(MediaError::Mac)
        );
    }

    const VIDEO_OKM_FOR_ZERO_KEY: &str = "ea08bc8326f8a11fd81a2abbd4f2e4950399f22155bd07b2477c06d0879751337d5eb70e81dd9bd1efdeeb9c0ef94259e69f45dce9ca9a10328b5976eb57bc203d0e4c533a4d444842931e4318f0c5d6008759160c208e19fa6c785620bf6f6d0c5322ec4dcdffc406d378a87c9a4e60";
    const AUDIO_OKM_FOR_ZERO_KEY: &str = "7cd5a674bce4998680c29f06c25bffbaba87493350a24b272d540720a6e9de794c167956b82a5ff84c3634c328939b8fa7a198e1711194001df31bd566ddbb8d0d8164710351bb913d73a8daed82ea700909a79f81754ed5525962304942e95ff12839c5e61d86772340891094465ee9";
}
