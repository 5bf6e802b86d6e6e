//! Opening the node's storage engine from the config, and the offline `repld format` and
//! `repld fsck` commands.

use std::path::{Path, PathBuf};

use anyhow::Context;
use repld_engine::{Device, Engine, EngineOptions, Error as EngineError, FormatOptions};

use crate::config::{Config, DeviceConfig};

/// The one device this node serves. A node serves one device for now; several are refused with
/// a clear message rather than half supported.
pub fn device(config: &Config) -> anyhow::Result<&DeviceConfig> {
    match config.devices.as_slice() {
        [one] => Ok(one),
        [] => anyhow::bail!(
            "devices: no device configured; add one [[devices]] entry (see docs/configuration.md)"
        ),
        _ => anyhow::bail!(
            "devices: {} devices configured, but this version of repld serves one device per node; keep one [[devices]] entry",
            config.devices.len()
        ),
    }
}

/// Where the index of the device lives: beside the data, under `data_dir`.
pub fn index_dir(config: &Config) -> PathBuf {
    config.data_dir.join("index")
}

/// Opens the engine. A missing image file with a `size` is created sparse and formatted; an
/// existing device without a repld superblock is formatted only with `format_if_missing` and
/// only when it carries no other signature.
pub fn open_engine(config: &Config) -> anyhow::Result<Engine> {
    let dev = device(config)?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("data_dir: cannot create {}", config.data_dir.display()))?;
    let mut opts = EngineOptions::new(&dev.path, index_dir(config));
    if dev.format_if_missing {
        opts.create = Some(FormatOptions {
            force: false,
            segment_size: None,
            create_size: dev.size.map(|s| s.bytes()),
        });
    }
    match Engine::open(opts.clone()) {
        Err(EngineError::NotFormatted { .. }) if dev.format_if_missing && dev.path.exists() => {
            tracing::info!(device = %dev.path.display(), "the device has no repld superblock: formatting it");
            Device::format(
                &dev.path,
                &FormatOptions {
                    force: false,
                    segment_size: None,
                    create_size: None,
                },
            )?;
            Ok(Engine::open(opts)?)
        }
        other => other.with_context(|| format!("cannot open device {}", dev.path.display())),
    }
}

/// `repld format DEVICE [--force] [--size SIZE]`.
pub fn format(device: &Path, force: bool, size: Option<u64>) -> anyhow::Result<()> {
    let sb = Device::format(
        device,
        &FormatOptions {
            force,
            segment_size: None,
            create_size: size,
        },
    )?;
    println!(
        "formatted {}: {} bytes, {} segments of {} MiB, volume {}",
        device.display(),
        sb.device_size,
        sb.slot_count,
        sb.segment_size >> 20,
        uuid::Uuid::from_bytes(sb.volume_uuid)
    );
    Ok(())
}

/// `repld fsck [--rebuild-index]`: checks the device's log offline; with `rebuild_index`,
/// discards the index and rebuilds it from the device.
pub fn fsck(config: &Config, rebuild_index: bool) -> anyhow::Result<()> {
    let dev = device(config)?;
    if rebuild_index {
        let mut opts = EngineOptions::new(&dev.path, index_dir(config));
        opts.rebuild_index = true;
        let engine = Engine::open(opts)
            .with_context(|| format!("cannot rebuild the index of {}", dev.path.display()))?;
        engine.close();
        println!(
            "rebuilt the index of {} from the device",
            dev.path.display()
        );
    }
    let r = repld_engine::fsck::check(&dev.path)?;
    println!(
        "{}: {} segments, {} units, {} records ({} chunks, {} commits, {} PFS events, {} checkpoints), {} payload bytes",
        dev.path.display(),
        r.segments,
        r.units,
        r.total_records(),
        r.records[0],
        r.records[1],
        r.records[2],
        r.records[3],
        r.payload_bytes
    );
    match r.torn_tail {
        Some(t) => println!("torn tail (the next start cuts it; it was never acknowledged): {t}"),
        None => println!("log is clean up to LSN {:#x}", r.end_lsn),
    }
    Ok(())
}
