//! The device: a regular image file or a block device, with a checksummed superblock.
//!
//! Layout (all offsets in bytes):
//!
//! ```text
//! 0            primary superblock (4 KiB)
//! DATA_START   segment slot 0, slot 1, ... each `segment_size` bytes
//! size - 4 KiB backup superblock (4 KiB, the last whole 4 KiB block)
//! ```
//!
//! `docs/on-disk-format.md` describes every field.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::codec::{Dec, Enc};
use crate::error::{Error, Result};

/// Bytes per superblock copy, and the alignment of every write.
pub const BLOCK: u64 = 4096;
/// Where segment slot 0 starts.
pub const DATA_START: u64 = 1 << 20;
/// The largest segment size `format` picks by itself (see [`auto_segment_size`]).
pub const DEFAULT_SEGMENT_SIZE: u64 = 64 << 20;
/// The smallest segment size `format` accepts.
pub const MIN_SEGMENT_SIZE: u64 = 4 << 20;
/// The current on-disk format version.
pub const FORMAT_VERSION: u32 = 1;

const SB_MAGIC: &[u8; 8] = b"REPLDSB\x01";

/// The superblock: what `format` decided about the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    /// On-disk format version.
    pub format_version: u32,
    /// The volume's UUID; every segment header repeats it.
    pub volume_uuid: [u8; 16],
    /// Device size in bytes when formatted.
    pub device_size: u64,
    /// Bytes per segment.
    pub segment_size: u64,
    /// Number of segment slots.
    pub slot_count: u64,
    /// When the device was formatted, in ns since the epoch.
    pub formatted_ns: u64,
}

impl Superblock {
    fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.raw(SB_MAGIC)
            .u32(self.format_version)
            .raw(&self.volume_uuid)
            .u64(self.device_size)
            .u64(self.segment_size)
            .u64(DATA_START)
            .u64(self.slot_count)
            .u64(self.formatted_ns);
        let crc = crc32c::crc32c(&e.0);
        e.u32(crc);
        let mut block = e.finish();
        block.resize(BLOCK as usize, 0);
        block
    }

    fn decode(block: &[u8]) -> std::result::Result<Superblock, &'static str> {
        let mut d = Dec::new(block);
        let magic = d.take(8).map_err(|_| "short")?;
        if magic != SB_MAGIC {
            return Err("no repld signature");
        }
        let parse =
            |d: &mut Dec<'_>| -> std::result::Result<(Superblock, u64), crate::codec::DecodeError> {
                let format_version = d.u32()?;
                let volume_uuid = d.uuid()?;
                let device_size = d.u64()?;
                let segment_size = d.u64()?;
                let data_start = d.u64()?;
                let slot_count = d.u64()?;
                let formatted_ns = d.u64()?;
                let sb = Superblock {
                    format_version,
                    volume_uuid,
                    device_size,
                    segment_size,
                    slot_count,
                    formatted_ns,
                };
                Ok((sb, data_start))
            };
        let (sb, data_start) = parse(&mut d).map_err(|_| "truncated")?;
        let body_len = block.len() - d.rest().len();
        let stored = d.u32().map_err(|_| "truncated")?;
        if crc32c::crc32c(&block[..body_len]) != stored {
            return Err("checksum mismatch");
        }
        if sb.format_version != FORMAT_VERSION {
            return Err("unsupported format version");
        }
        if data_start != DATA_START
            || sb.segment_size < MIN_SEGMENT_SIZE
            || !sb.segment_size.is_multiple_of(BLOCK)
        {
            return Err("impossible geometry");
        }
        Ok(sb)
    }

    /// Where segment slot `slot` starts on the device.
    pub fn slot_offset(&self, slot: u64) -> u64 {
        DATA_START + slot * self.segment_size
    }

    fn backup_offset(device_size: u64) -> u64 {
        (device_size / BLOCK - 1) * BLOCK
    }
}

/// How to format a device.
#[derive(Debug, Clone)]
pub struct FormatOptions {
    /// Overwrite a device that carries another signature (or a repld one).
    pub force: bool,
    /// Bytes per segment; [`DEFAULT_SEGMENT_SIZE`] when `None`.
    pub segment_size: Option<u64>,
    /// For an image file that does not exist yet: create it sparse with this size.
    pub create_size: Option<u64>,
}

/// An open device.
#[derive(Debug)]
pub struct Device {
    file: File,
    path: PathBuf,
    sb: Superblock,
}

impl Device {
    /// Formats `path`, creating it as a sparse image file if it is absent and `create_size` is
    /// given. Refuses a device with a recognizable signature (or any non-zero data in its first
    /// 64 KiB) unless `force`, as mkfs does.
    pub fn format(path: &Path, opts: &FormatOptions) -> Result<Superblock> {
        if opts.create_size.is_some() && !path.exists() {
            // A new image is formatted under a temporary name and renamed into place: a crash
            // half-way through the first start must not leave an image without a superblock,
            // which every later start would refuse (it exists, so it is not created again).
            let mut tmp = path.as_os_str().to_owned();
            tmp.push(".formatting");
            let tmp = PathBuf::from(tmp);
            match std::fs::remove_file(&tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("remove {}", tmp.display()), e)),
            }
            let sb = Device::format_in_place(&tmp, opts)?;
            std::fs::rename(&tmp, path).map_err(|e| {
                Error::io(format!("rename {} to {}", tmp.display(), path.display()), e)
            })?;
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
            return Ok(sb);
        }
        Device::format_in_place(path, opts)
    }

    fn format_in_place(path: &Path, opts: &FormatOptions) -> Result<Superblock> {
        let file = open_or_create(path, opts.create_size)?;
        let size = device_size(&file, path)?;
        if !opts.force
            && let Some(sig) = detect_signature(&file, path)?
        {
            return Err(Error::ForeignSignature {
                path: path.to_owned(),
                signature: sig,
            });
        }
        let segment_size = opts.segment_size.unwrap_or_else(|| auto_segment_size(size));
        if segment_size < MIN_SEGMENT_SIZE || !segment_size.is_multiple_of(BLOCK) {
            return Err(Error::Invalid(format!(
                "segment size {segment_size} must be a multiple of 4096 and at least {MIN_SEGMENT_SIZE}"
            )));
        }
        let usable = size.saturating_sub(DATA_START + BLOCK);
        let slot_count = usable / segment_size;
        if slot_count < 2 {
            return Err(Error::Invalid(format!(
                "{} is {size} bytes: too small for two {segment_size}-byte segments plus superblocks",
                path.display()
            )));
        }
        let sb = Superblock {
            format_version: FORMAT_VERSION,
            volume_uuid: *uuid::Uuid::new_v4().as_bytes(),
            device_size: size,
            segment_size,
            slot_count,
            formatted_ns: repl_types::Tid::now().get(),
        };
        // Invalidate every segment header first, so that no segment of an earlier format (or of
        // another volume) can be mistaken for ours: headers also carry the volume UUID, but a
        // clean slate makes the first open cheap and the device's state obvious.
        let zero = vec![0u8; BLOCK as usize];
        for slot in 0..slot_count {
            write_at(&file, path, &zero, sb.slot_offset(slot))?;
        }
        let block = sb.encode();
        write_at(&file, path, &block, Superblock::backup_offset(size))?;
        write_at(&file, path, &block, 0)?;
        file.sync_all()
            .map_err(|e| Error::io(format!("fsync {}", path.display()), e))?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        Ok(sb)
    }

    /// Opens a formatted device. A damaged primary superblock is repaired from the backup.
    pub fn open(path: &Path) -> Result<Device> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        // One owner per device: a second engine (or an fsck) on a device in use would corrupt
        // it. The kernel drops the lock when the process dies, however it dies.
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                if e == rustix::io::Errno::WOULDBLOCK {
                    Error::DeviceBusy {
                        path: path.to_owned(),
                    }
                } else {
                    Error::io(format!("lock {}", path.display()), e.into())
                }
            },
        )?;
        let size = device_size(&file, path)?;
        let mut block = vec![0u8; BLOCK as usize];
        read_at(&file, path, &mut block, 0)?;
        let primary = Superblock::decode(&block);
        let sb = match primary {
            Ok(sb) => sb,
            Err(primary_err) => {
                if size < DATA_START + BLOCK {
                    return Err(Error::NotFormatted {
                        path: path.to_owned(),
                        detail: primary_err.to_owned(),
                    });
                }
                read_at(&file, path, &mut block, Superblock::backup_offset(size))?;
                match Superblock::decode(&block) {
                    Ok(sb)
                        if primary_err != "no repld signature" || block_is_zero(&file, path)? =>
                    {
                        tracing::warn!(device = %path.display(), reason = primary_err, "primary superblock damaged; restoring it from the backup copy");
                        write_at(&file, path, &sb.encode(), 0)?;
                        file.sync_data()
                            .map_err(|e| Error::io(format!("fsync {}", path.display()), e))?;
                        sb
                    }
                    _ => {
                        return Err(Error::NotFormatted {
                            path: path.to_owned(),
                            detail: primary_err.to_owned(),
                        });
                    }
                }
            }
        };
        if size < sb.device_size {
            return Err(Error::Invalid(format!(
                "{} is {size} bytes but was formatted with {} bytes: the device shrank; refusing to open it",
                path.display(),
                sb.device_size
            )));
        }
        Ok(Device {
            file,
            path: path.to_owned(),
            sb,
        })
    }

    /// The superblock.
    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    /// The device path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        read_at(&self.file, &self.path, buf, offset)
    }

    /// Reads `len` bytes at `offset` onto the end of `out`, straight into its spare capacity
    /// (no zero-fill, no copy). On an error `out` keeps only what it held before.
    pub fn read_append(&self, out: &mut Vec<u8>, len: usize, offset: u64) -> Result<()> {
        let start = out.len();
        out.reserve(len);
        while out.len() < start + len {
            let done = (out.len() - start) as u64;
            let want = start + len - out.len();
            let spare = &mut out.spare_capacity_mut()[..want];
            match rustix::io::pread(&self.file, spare, offset + done) {
                Ok((read, _)) if !read.is_empty() => {
                    let n = read.len();
                    // SAFETY: `pread` initialized the first `n` bytes of the spare capacity
                    // (`read` is that initialized part), and `n <= want` fits the capacity.
                    #[allow(unsafe_code)]
                    unsafe {
                        out.set_len(out.len() + n);
                    }
                }
                Ok(_) => {
                    out.truncate(start);
                    return Err(Error::io(
                        format!("read {len} bytes at {offset} from {}", self.path.display()),
                        std::io::ErrorKind::UnexpectedEof.into(),
                    ));
                }
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    out.truncate(start);
                    return Err(Error::io(
                        format!("read {len} bytes at {offset} from {}", self.path.display()),
                        e.into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes all of `buf` at `offset`. Not durable until [`Device::sync`].
    pub fn write_at(&self, buf: &[u8], offset: u64) -> Result<()> {
        write_at(&self.file, &self.path, buf, offset)
    }

    /// Writes `bufs` back to back at `offset` (one `pwritev`, repeated if the kernel takes only
    /// part), so that a header and a large body need not be copied into one buffer first. Not
    /// durable until [`Device::sync`].
    pub fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> Result<()> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut done = 0usize;
        while done < total {
            // The slices not yet (fully) written.
            let mut skip = done;
            let rest: Vec<std::io::IoSlice<'_>> = bufs
                .iter()
                .filter_map(|b| {
                    if skip >= b.len() {
                        skip -= b.len();
                        None
                    } else {
                        let s = std::io::IoSlice::new(&b[skip..]);
                        skip = 0;
                        Some(s)
                    }
                })
                .take(IOV_MAX)
                .collect();
            match rustix::io::pwritev(&self.file, &rest, offset + done as u64) {
                Ok(0) => {
                    return Err(write_error(
                        &self.path,
                        total,
                        offset,
                        std::io::ErrorKind::WriteZero.into(),
                    ));
                }
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(write_error(&self.path, total, offset, e.into())),
            }
        }
        Ok(())
    }

    /// Releases the device to other processes (the engine does this once its writer has
    /// stopped).
    pub fn unlock(&self) {
        if let Err(e) = rustix::fs::flock(&self.file, rustix::fs::FlockOperation::Unlock) {
            tracing::warn!(device = %self.path.display(), error = %e, "unlocking the device failed");
        }
    }

    /// Starts write-back of `len` bytes at `offset` and returns without waiting for it
    /// (`sync_file_range` with `SYNC_FILE_RANGE_WRITE`). It makes nothing durable: it is a hint,
    /// so that the next [`Device::sync`] finds those pages already written or on their way
    /// instead of writing all of a large transaction at once. A failed write-back is reported by
    /// that sync, as the kernel keeps a file's write-back errors for its next `fdatasync`; this
    /// call's own error (for example on a file system without support) is therefore only logged.
    pub fn start_writeback(&self, offset: u64, len: u64) {
        use std::os::fd::AsRawFd as _;
        let (Ok(off), Ok(n)) = (i64::try_from(offset), i64::try_from(len)) else {
            return;
        };
        // SAFETY: sync_file_range reads no memory of ours; it takes a file descriptor this
        // device owns (open for the whole call, as `self` is borrowed) and plain integers.
        #[allow(unsafe_code)]
        let rc = unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), off, n, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                device = %self.path.display(),
                "sync_file_range failed; the next fdatasync writes everything"
            );
        }
    }

    /// Asks the kernel to drop `[offset, offset + len)` from the page cache (`posix_fadvise`
    /// `DONTNEED`); for durable data nothing will read soon. Advice only: a failure is logged.
    pub fn drop_cached(&self, offset: u64, len: u64) {
        let Some(len) = std::num::NonZeroU64::new(len) else {
            return;
        };
        if let Err(e) =
            rustix::fs::fadvise(&self.file, offset, Some(len), rustix::fs::Advice::DontNeed)
        {
            tracing::debug!(error = %e, device = %self.path.display(), "fadvise DONTNEED failed");
        }
    }

    /// Makes everything written so far durable (`fdatasync`).
    pub fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .map_err(|e| Error::io(format!("fdatasync {}", self.path.display()), e))
    }
}

/// The segment size for a device when none is given: a 32nd of the device in whole MiB, between
/// [`MIN_SEGMENT_SIZE`] and [`DEFAULT_SEGMENT_SIZE`], so that small images get enough segments
/// and large devices get the default.
pub fn auto_segment_size(device_size: u64) -> u64 {
    ((device_size / 32) >> 20 << 20).clamp(MIN_SEGMENT_SIZE, DEFAULT_SEGMENT_SIZE)
}

fn open_or_create(path: &Path, create_size: Option<u64>) -> Result<File> {
    let mut opts = OpenOptions::new();
    opts.read(true).write(true);
    match (path.exists(), create_size) {
        (true, _) => opts
            .open(path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e)),
        (false, Some(size)) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| Error::io(format!("create directory {}", parent.display()), e))?;
            }
            let file = opts
                .create_new(true)
                .open(path)
                .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
            // set_len extends without writing: the image stays sparse.
            file.set_len(size)
                .map_err(|e| Error::io(format!("size {}", path.display()), e))?;
            Ok(file)
        }
        (false, None) => Err(Error::Invalid(format!(
            "{} does not exist: give a size to create an image file there, or name an existing block device",
            path.display()
        ))),
    }
}

/// A regular file's length, or a block device's size as the kernel reports it (`lseek(SEEK_END)`
/// gives the device size for block devices on Linux).
fn device_size(file: &File, path: &Path) -> Result<u64> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if meta.file_type().is_block_device() {
        let mut f = file;
        f.seek(SeekFrom::End(0))
            .map_err(|e| Error::io(format!("size of {}", path.display()), e))
    } else if meta.is_file() {
        Ok(meta.len())
    } else {
        Err(Error::Invalid(format!(
            "{} is neither a regular file nor a block device",
            path.display()
        )))
    }
}

/// Known signatures, as (offset, magic, name), after blkid's most common ones.
const SIGNATURES: &[(u64, &[u8], &str)] = &[
    (0, SB_MAGIC, "repld"),
    (1080, &[0x53, 0xEF], "ext2/3/4"),
    (0, b"XFSB", "xfs"),
    (65600, b"_BHRfS_M", "btrfs"),
    (0, b"LUKS\xba\xbe", "LUKS"),
    (4086, b"SWAPSPACE2", "Linux swap"),
    (4086, b"SWAP-SPACE", "Linux swap"),
    (512, b"EFI PART", "GPT partition table"),
    (3, b"NTFS    ", "NTFS"),
    (82, b"FAT32   ", "FAT32"),
    (54, b"FAT1", "FAT"),
    (0, b"hsqs", "squashfs"),
];

fn detect_signature(file: &File, path: &Path) -> Result<Option<String>> {
    let size = device_size(file, path)?;
    let mut head = vec![0u8; 72 * 1024];
    let n = head.len().min(size as usize);
    read_at(file, path, &mut head[..n], 0)?;
    for (off, magic, name) in SIGNATURES {
        let (off, end) = (*off as usize, *off as usize + magic.len());
        if end <= n && &head[off..end] == *magic {
            return Ok(Some((*name).to_owned()));
        }
    }
    if n >= 512 && head[510] == 0x55 && head[511] == 0xAA {
        return Ok(Some("DOS partition table".to_owned()));
    }
    if head[..n.min(64 * 1024)].iter().any(|&b| b != 0) {
        return Ok(Some(
            "unknown (non-zero data in the first 64 KiB)".to_owned(),
        ));
    }
    Ok(None)
}

fn block_is_zero(file: &File, path: &Path) -> Result<bool> {
    let mut block = vec![0u8; BLOCK as usize];
    read_at(file, path, &mut block, 0)?;
    Ok(block.iter().all(|&b| b == 0))
}

fn read_at(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    file.read_exact_at(buf, offset).map_err(|e| {
        Error::io(
            format!(
                "read {} bytes at {offset} from {}",
                buf.len(),
                path.display()
            ),
            e,
        )
    })
}

fn write_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(buf, offset)
        .map_err(|e| write_error(path, buf.len(), offset, e))
}

fn write_error(path: &Path, len: usize, offset: u64, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc_enospc()) {
        Error::DeviceFull {
            detail: format!(
                "the file system holding {} has no space left (the image file is sparse); free space there",
                path.display()
            ),
        }
    } else {
        Error::io(
            format!("write {len} bytes at {offset} to {}", path.display()),
            e,
        )
    }
}

/// The most buffers one `pwritev` takes (Linux `IOV_MAX`).
const IOV_MAX: usize = 1024;

const fn libc_enospc() -> i32 {
    28
}

/// fsyncs a directory, so that a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<()> {
    // The parent of a bare file name is the empty path: the current directory.
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let d =
        File::open(dir).map_err(|e| Error::io(format!("open directory {}", dir.display()), e))?;
    d.sync_all()
        .map_err(|e| Error::io(format!("fsync directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(size: u64) -> FormatOptions {
        FormatOptions {
            force: false,
            segment_size: Some(MIN_SEGMENT_SIZE),
            create_size: Some(size),
        }
    }

    #[test]
    fn format_creates_a_sparse_image_and_open_reads_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dev.img");
        let sb = Device::format(&path, &opts(64 << 20)).expect("format");
        let meta = std::fs::metadata(&path).expect("stat");
        use std::os::unix::fs::MetadataExt;
        assert!(
            meta.blocks() * 512 < meta.len() / 2,
            "image should be sparse"
        );
        let dev = Device::open(&path).expect("open");
        assert_eq!(dev.superblock(), &sb);
        assert_eq!(sb.slot_count, (64 - 1) / 4);
    }

    #[test]
    fn a_new_image_appears_only_once_formatted() {
        // A first start killed while formatting leaves at most the temporary image, which the
        // next start replaces.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dev.img");
        let tmp = dir.path().join("dev.img.formatting");
        std::fs::write(&tmp, b"left by a killed first start").expect("leftover");
        let sb = Device::format(&path, &opts(32 << 20)).expect("format");
        assert!(!tmp.exists(), "the temporary image is renamed into place");
        assert_eq!(Device::open(&path).expect("open").superblock(), &sb);
    }

    #[test]
    fn refuses_foreign_and_existing_signatures_unless_forced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ext4.img");
        let f = File::create(&path).expect("create");
        f.set_len(32 << 20).expect("size");
        f.write_all_at(&[0x53, 0xEF], 1080).expect("write magic");
        let err = Device::format(&path, &opts(0)).expect_err("must refuse");
        assert!(err.to_string().contains("ext2/3/4"), "{err}");
        Device::format(
            &path,
            &FormatOptions {
                force: true,
                ..opts(0)
            },
        )
        .expect("forced format");
        let err = Device::format(&path, &opts(0)).expect_err("already repld");
        assert!(err.to_string().contains("repld"), "{err}");
    }

    #[test]
    fn a_damaged_primary_superblock_is_restored_from_the_backup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dev.img");
        let sb = Device::format(&path, &opts(32 << 20)).expect("format");
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(b"garbage!", 16).expect("corrupt");
        drop(f);
        let dev = Device::open(&path).expect("open from backup");
        assert_eq!(dev.superblock(), &sb);
        drop(dev);
        let dev = Device::open(&path).expect("primary was rewritten");
        assert_eq!(dev.superblock(), &sb);
    }

    #[test]
    fn a_vectored_write_lands_its_pieces_back_to_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("dev.img");
        Device::format(&path, &opts(32 << 20)).expect("format");
        let dev = Device::open(&path).expect("open");
        let body: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let off = DATA_START + 8192;
        dev.write_vectored_at(&[b"head", &[], &body, &[0u8; 3]], off)
            .expect("write");
        let mut back = vec![0xFFu8; 4 + body.len() + 3];
        dev.read_at(&mut back, off).expect("read");
        assert_eq!(&back[..4], b"head");
        assert_eq!(&back[4..4 + body.len()], &body[..]);
        assert_eq!(&back[4 + body.len()..], &[0u8; 3]);
    }

    #[test]
    fn an_unformatted_file_is_reported_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blank.img");
        File::create(&path)
            .expect("create")
            .set_len(8 << 20)
            .expect("size");
        assert!(matches!(
            Device::open(&path),
            Err(Error::NotFormatted { .. })
        ));
    }
}
