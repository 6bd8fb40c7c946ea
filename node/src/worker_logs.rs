//! Worker output into log files: the node reads each worker's stdout and stderr
//! pipes (so nothing a dying worker printed is lost) and appends them to
//! `worker-<id>-<job>-<pid>.out|err`, rotating by size: at the limit the file
//! becomes `<name>.1`, older copies shift to `.2` … `.<backups>`, and the oldest
//! goes, as Ray's `RAY_ROTATION_MAX_BYTES` / `RAY_ROTATION_BACKUP_COUNT` do.

use std::io::Write;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncReadExt};

/// When a worker log file is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// Size at which the file is rotated.
    pub max_bytes: u64,
    /// Rotated copies kept.
    pub backups: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Self { max_bytes: 512 << 20, backups: 5 }
    }
}

fn backup(path: &Path, index: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{index}"));
    PathBuf::from(name)
}

/// Moves `path` to `path.1`, shifting older copies up and dropping the oldest.
pub fn rotate(path: &Path, backups: u32) -> std::io::Result<()> {
    if backups == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(backup(path, backups));
    for index in (1..backups).rev() {
        let _ = std::fs::rename(backup(path, index), backup(path, index + 1));
    }
    std::fs::rename(path, backup(path, 1))
}

fn open(path: &Path) -> std::io::Result<std::fs::File> {
    manta_proto::private_fs::open_append(path)
}

/// Copies `pipe` into `path` until the worker closes it, rotating whole lines.
pub async fn copy(
    mut pipe: impl AsyncRead + Unpin,
    path: PathBuf,
    rotation: Rotation,
    state: tokio::sync::watch::Sender<crate::log_pipes::CopyState>,
) -> std::io::Result<()> {
    use crate::log_pipes::CopyState;
    let mut file = open(&path)?;
    let mut size = file.metadata()?.len();
    let mut buffer = vec![0u8; 64 << 10];
    loop {
        state.send_replace(CopyState::Waiting);
        let read = pipe.read(&mut buffer).await;
        state.send_replace(CopyState::Writing);
        let read = read?;
        if read == 0 {
            state.send_replace(CopyState::Closed);
            return Ok(());
        }
        let mut chunk = &buffer[..read];
        // Fill the file with whole lines up to the limit, rotate, go on with the rest.
        while size + chunk.len() as u64 > rotation.max_bytes {
            let room = (rotation.max_bytes.saturating_sub(size) as usize).min(chunk.len());
            let cut = chunk[..room].iter().rposition(|byte| *byte == b'\n').map_or(0, |at| at + 1);
            if cut == 0 && size == 0 {
                // One line longer than the limit: it stays whole.
                break;
            }
            file.write_all(&chunk[..cut])?;
            chunk = &chunk[cut..];
            rotate(&path, rotation.backups)?;
            file = open(&path)?;
            size = 0;
        }
        file.write_all(chunk)?;
        size += chunk.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test]
    async fn rotates_at_the_limit_on_line_boundaries_and_keeps_the_backups_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker-x.out");
        let (mut writer, reader) = tokio::io::duplex(1 << 16);
        let (state, _) = tokio::sync::watch::channel(crate::log_pipes::CopyState::Writing);
        let copier = tokio::spawn(copy(reader, path.clone(), Rotation { max_bytes: 100, backups: 2 }, state));
        for index in 0..40 {
            writer.write_all(format!("line number {index:04}\n").as_bytes()).await.unwrap();
            writer.flush().await.unwrap();
            tokio::task::yield_now().await;
        }
        drop(writer);
        copier.await.unwrap().unwrap();
        let current = std::fs::read_to_string(&path).unwrap();
        let first = std::fs::read_to_string(backup(&path, 1)).unwrap();
        let second = std::fs::read_to_string(backup(&path, 2)).unwrap();
        assert!(!backup(&path, 3).exists(), "only two backups are kept");
        for text in [&current, &first, &second] {
            assert!(text.len() <= 100 && text.ends_with('\n'), "{text:?}");
        }
        assert!(current.ends_with("line number 0039\n"));
        let kept: Vec<&str> = second.lines().chain(first.lines()).chain(current.lines()).collect();
        let numbers: Vec<u32> = kept.iter().map(|line| line[12..].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|pair| pair[1] == pair[0] + 1), "{numbers:?}");
    }
}
