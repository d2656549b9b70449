//! Which decompressor a layer blob needs.
//!
//! The media type is a hint and the magic bytes are the truth, as in Docker's
//! `archive.DecompressStream`: registries and `docker save` are known to label a layer
//! `tar.gzip` or plain `tar` whatever it holds. Media types that are not layers at all are
//! refused, so a config or manifest blob passed by mistake fails clearly.

use std::io::{self, BufRead, BufReader, Read};

use super::ExtractError;

/// A layer's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar stream.
    None,
    /// gzip (RFC 1952).
    Gzip,
    /// Zstandard (RFC 8878).
    Zstd,
}

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const BZIP2_MAGIC: &[u8] = b"BZh";

impl Compression {
    /// The compression a layer media type declares; `Ok(None)` for an empty media type (then
    /// only the magic bytes decide).
    ///
    /// # Errors
    /// [`ExtractError::UnsupportedMediaType`] when the media type is not a layer's.
    pub fn from_media_type(media_type: &str) -> Result<Option<Compression>, ExtractError> {
        let declared = match media_type {
            "" => return Ok(None),
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/x-tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Compression::Zstd,
            other => {
                return Err(ExtractError::UnsupportedMediaType {
                    media_type: other.to_owned(),
                })
            }
        };
        Ok(Some(declared))
    }

    /// The compression the first bytes of a blob show.
    ///
    /// # Errors
    /// [`ExtractError::UnsupportedCompression`] for xz and bzip2, which OCI layers never use.
    pub fn sniff(head: &[u8]) -> Result<Compression, ExtractError> {
        if head.starts_with(GZIP_MAGIC) {
            Ok(Compression::Gzip)
        } else if head.starts_with(ZSTD_MAGIC) {
            Ok(Compression::Zstd)
        } else if head.starts_with(XZ_MAGIC) {
            Err(ExtractError::UnsupportedCompression { format: "xz" })
        } else if head.starts_with(BZIP2_MAGIC) {
            Err(ExtractError::UnsupportedCompression { format: "bzip2" })
        } else {
            Ok(Compression::None)
        }
    }
}

/// Wraps `reader` in the decompressor that `media_type` and the magic bytes call for.
pub(crate) fn decompress<'a, R: Read + 'a>(
    reader: R,
    media_type: &str,
) -> Result<(Compression, Box<dyn Read + 'a>), ExtractError> {
    let declared = Compression::from_media_type(media_type)?;
    let mut reader = BufReader::with_capacity(128 * 1024, reader);
    let head = reader
        .fill_buf()
        .map_err(|source| ExtractError::Read { source })?;
    let actual = Compression::sniff(head)?;
    if let Some(declared) = declared {
        if declared != actual {
            tracing::warn!(
                media_type,
                ?actual,
                "layer media type disagrees with its content; using the content"
            );
        }
    }
    let out: Box<dyn Read + 'a> = match actual {
        Compression::None => Box::new(reader),
        // MultiGzDecoder: pigz and some registries write concatenated gzip members.
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(reader)
                .map_err(|source| ExtractError::Read { source })?,
        ),
    };
    Ok((actual, out))
}

/// Reads `reader` to its end, so a digest over everything can be finished.
pub(crate) fn drain(mut reader: impl Read) -> io::Result<u64> {
    io::copy(&mut reader, &mut io::sink())
}
