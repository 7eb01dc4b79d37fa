//! Checking that a snapshot is what its sender says it is: a whole JPEG (start and end
//! markers, a frame header naming its size, every segment inside the payload), within a
//! size limit, whose SHA-256 is the one named with it. The cloud's snapshot writer checks
//! every picture an edge uploads with [`check`] before it stores anything (issue 17).

use std::fmt::Write as _;

use sha2::{Digest, Sha256};
use thiserror::Error;

/// What a checked JPEG is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegInfo {
    pub width: u16,
    pub height: u16,
    /// Bytes of the whole payload.
    pub len: usize,
}

/// Why a payload is not an acceptable snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JpegError {
    #[error("the payload is empty")]
    Empty,
    #[error("{len} bytes is over the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("not a JPEG: it does not start with the SOI marker FF D8")]
    NoStart,
    #[error("not a whole JPEG: it does not end with the EOI marker FF D9 (cut short?)")]
    NoEnd,
    #[error("malformed JPEG at byte {at}: {problem}")]
    Malformed { at: usize, problem: &'static str },
    #[error("malformed JPEG: no frame header (SOF) before the image data")]
    NoFrame,
    #[error("malformed JPEG: the frame header says {width}x{height}")]
    EmptyFrame { width: u16, height: u16 },
    #[error("SHA-256 mismatch: the sender named {named}, the payload hashes to {actual}")]
    Digest { named: String, actual: String },
}

/// The SHA-256 of `bytes`, as lowercase hex (how headers and tables carry it).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// Checks `bytes` as a snapshot: at most `max_len` bytes, a whole JPEG, hashing to
/// `sha256` (hex, either case). The cheap checks come first, the hash last.
pub fn check(bytes: &[u8], max_len: usize, sha256: &str) -> Result<JpegInfo, JpegError> {
    if bytes.is_empty() {
        return Err(JpegError::Empty);
    }
    if bytes.len() > max_len {
        return Err(JpegError::TooLarge {
            len: bytes.len(),
            max: max_len,
        });
    }
    let info = parse(bytes)?;
    let actual = sha256_hex(bytes);
    if !actual.eq_ignore_ascii_case(sha256.trim()) {
        return Err(JpegError::Digest {
            named: sha256.chars().take(80).collect(),
            actual,
        });
    }
    Ok(info)
}

/// Walks the marker segments up to the image data: the frame header gives the size; the
/// entropy-coded data after the scan header runs to the end marker.
fn parse(bytes: &[u8]) -> Result<JpegInfo, JpegError> {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return Err(JpegError::NoStart);
    }
    if !bytes.ends_with(&[0xFF, 0xD9]) {
        return Err(JpegError::NoEnd);
    }
    let malformed = |at: usize, problem: &'static str| JpegError::Malformed { at, problem };
    let mut frame = None;
    let mut at = 2;
    loop {
        if bytes.get(at) != Some(&0xFF) {
            return Err(malformed(at, "expected a marker (FF)"));
        }
        // Any number of FF fill bytes may come before a marker code.
        while bytes.get(at) == Some(&0xFF) {
            at += 1;
        }
        let marker = *bytes
            .get(at)
            .ok_or_else(|| malformed(at, "the payload ends inside a marker"))?;
        at += 1;
        match marker {
            // Markers without a length: restart markers and TEM.
            0x01 | 0xD0..=0xD7 => continue,
            0xD8 => return Err(malformed(at - 2, "a second start marker")),
            0xD9 => return Err(malformed(at - 2, "the end marker before any image data")),
            _ => {}
        }
        let length = match bytes.get(at..at + 2) {
            Some(&[high, low]) => usize::from(u16::from_be_bytes([high, low])),
            _ => return Err(malformed(at, "the payload ends inside a segment length")),
        };
        if length < 2 {
            return Err(malformed(at, "a segment length under 2"));
        }
        let segment = bytes
            .get(at + 2..at + length)
            .ok_or_else(|| malformed(at, "a segment runs past the end of the payload"))?;
        // Frame headers: SOF0-SOF15 but DHT (C4), JPG (C8) and DAC (CC).
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let (height, width) = match segment {
                [_precision, h1, h2, w1, w2, ..] => (
                    u16::from_be_bytes([*h1, *h2]),
                    u16::from_be_bytes([*w1, *w2]),
                ),
                _ => return Err(malformed(at, "a frame header too short for its size")),
            };
            if width == 0 || height == 0 {
                return Err(JpegError::EmptyFrame { width, height });
            }
            frame = Some((width, height));
        }
        at += length;
        if marker == 0xDA {
            // The scan header: image data follows, up to the end marker checked above.
            let (width, height) = frame.ok_or(JpegError::NoFrame)?;
            if at > bytes.len() - 2 {
                return Err(malformed(at, "no image data after the scan header"));
            }
            return Ok(JpegInfo {
                width,
                height,
                len: bytes.len(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picture(name: &str) -> Vec<u8> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/images")
            .join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    #[test]
    fn the_test_pictures_pass_with_their_size_and_hash() {
        for name in [
            "dog.jpg",
            "eagle.jpg",
            "giraffe.jpg",
            "horses.jpg",
            "person.jpg",
        ] {
            let bytes = picture(name);
            let hash = sha256_hex(&bytes);
            let info = check(&bytes, 10 << 20, &hash.to_uppercase()).unwrap();
            assert!(info.width > 0 && info.height > 0, "{name}: {info:?}");
            assert_eq!(info.len, bytes.len());
        }
        // Its size as an image decoder reads it.
        let dog = picture("dog.jpg");
        let info = check(&dog, 10 << 20, &sha256_hex(&dog)).unwrap();
        assert_eq!((info.width, info.height), (768, 576));
    }

    #[test]
    fn the_hash_of_nothing_is_the_known_one() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn every_failure_says_what_is_wrong() {
        let dog = picture("dog.jpg");
        let hash = sha256_hex(&dog);
        let cut = &dog[..dog.len() / 2];
        let mut no_frame = vec![0xFF, 0xD8, 0xFF, 0xDA, 0x00, 0x02, 0x11, 0x22];
        no_frame.extend([0xFF, 0xD9]);
        let mut zero = vec![
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x0B, 8, 0, 0, 0, 16, 1, 1, 0x11, 0,
        ];
        zero.extend([0xFF, 0xDA, 0x00, 0x02, 0x11, 0xFF, 0xD9]);
        let mut overrun = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x40, 0x00, 1, 2];
        overrun.extend([0xFF, 0xD9]);
        let cases: Vec<(&[u8], usize, &str, JpegError)> = vec![
            (b"", 100, "", JpegError::Empty),
            (
                &dog,
                1000,
                &hash,
                JpegError::TooLarge {
                    len: dog.len(),
                    max: 1000,
                },
            ),
            (b"GIF89a....", 100, "", JpegError::NoStart),
            (cut, 10 << 20, &hash, JpegError::NoEnd),
            (&no_frame, 100, "", JpegError::NoFrame),
            (
                &zero,
                100,
                "",
                JpegError::EmptyFrame {
                    width: 16,
                    height: 0,
                },
            ),
        ];
        for (bytes, max, named, want) in cases {
            assert_eq!(check(bytes, max, named), Err(want.clone()), "{want}");
        }
        assert!(matches!(
            check(&overrun, 100, ""),
            Err(JpegError::Malformed { at: 4, problem }) if problem.contains("past the end")
        ));
        let wrong = "0".repeat(64);
        let err = check(&dog, 10 << 20, &wrong).unwrap_err();
        assert_eq!(
            err,
            JpegError::Digest {
                named: wrong,
                actual: hash
            }
        );
        assert!(err.to_string().starts_with("SHA-256 mismatch"), "{err}");
    }

    #[test]
    fn no_byte_string_makes_it_panic() {
        // Every cut and every single-byte change of a real picture: an answer, never a panic.
        let dog = picture("dog.jpg");
        let head = &dog[..600.min(dog.len())];
        for end in 0..head.len() {
            let mut bytes = head[..end].to_vec();
            bytes.extend([0xFF, 0xD9]);
            let _ = check(&bytes, 10 << 20, "");
        }
        for i in 0..head.len() {
            for value in [0x00, 0xFF, 0xD9, 0xDA, 0xC0] {
                let mut bytes = dog.clone();
                bytes[i] = value;
                let _ = check(&bytes, 10 << 20, "");
            }
        }
    }
}
