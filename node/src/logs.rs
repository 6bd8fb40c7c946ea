//! The node's log files for `manta logs`: listing them and reading pieces.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use manta_proto::logs::{ListLogsReply, LogFileInfo, ReadLogReply, ReadLogRequest};
use manta_proto::{ErrorCode, WireError};

/// Bytes one read returns at most.
const MAX_READ: u64 = 4 << 20;

/// The files of the log folder (worker streams and the node's own log), by name.
pub fn list(dir: &Path) -> ListLogsReply {
    let mut files: Vec<LogFileInfo> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let metadata = entry.metadata().ok().filter(|metadata| metadata.is_file())?;
            Some(LogFileInfo { name: entry.file_name().to_string_lossy().into_owned(), size: metadata.len() })
        })
        .collect();
    if let Some(node_log) = dir.parent().map(|node_dir| node_dir.join("node.log"))
        && let Ok(metadata) = std::fs::metadata(&node_log)
    {
        files.push(LogFileInfo { name: "node.log".into(), size: metadata.len() });
    }
    files.sort_by(|a, b| a.name.cmp(&b.name));
    ListLogsReply { files }
}

/// A piece of one file: from an offset, or its last lines.
pub fn read(dir: &Path, request: &ReadLogRequest) -> Result<ReadLogReply, WireError> {
    let name = &request.name;
    if name.is_empty() || name.contains('/') || name.contains("..") {
        return Err(WireError::invalid(format!("{name:?} is not a log file name; `manta logs` lists them")));
    }
    let path = if name == "node.log" { dir.parent().unwrap_or(dir).join(name) } else { dir.join(name) };
    let mut file = std::fs::File::open(&path).map_err(|_| {
        WireError::new(ErrorCode::NotFound, format!("no log file {name:?} on this node; `manta logs` lists them"))
    })?;
    let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    let start = match request.tail_lines {
        Some(lines) => tail_start(&mut file, size, lines).map_err(|error| WireError::internal(error.to_string()))?,
        None => request.offset.min(size),
    };
    let want = request.max_bytes.clamp(1, MAX_READ).min(size - start);
    let mut data = vec![0; want as usize];
    file.seek(SeekFrom::Start(start))
        .and_then(|_| file.read_exact(&mut data))
        .map_err(|error| WireError::internal(error.to_string()))?;
    Ok(ReadLogReply { next_offset: start + want, data })
}

/// Where the last `lines` lines of a file start.
fn tail_start(file: &mut std::fs::File, size: u64, lines: u64) -> std::io::Result<u64> {
    let mut end = size;
    let mut newlines = 0;
    let mut buffer = vec![0u8; 64 << 10];
    // A final newline ends the last line; it does not start one.
    let mut skip_last = true;
    while end > 0 {
        let start = end.saturating_sub(buffer.len() as u64);
        let chunk = &mut buffer[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        for (index, byte) in chunk.iter().enumerate().rev() {
            if *byte != b'\n' {
                skip_last = false;
                continue;
            }
            if skip_last {
                skip_last = false;
                continue;
            }
            newlines += 1;
            if newlines == lines.max(1) {
                return Ok(start + index as u64 + 1);
            }
        }
        end = start;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails_lists_and_refuses_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("worker-a.out"), "one\ntwo\nthree\n").unwrap();
        assert_eq!(list(dir.path()).files.len(), 1);
        let tail = ReadLogRequest { name: "worker-a.out".into(), offset: 0, max_bytes: 1 << 20, tail_lines: Some(2) };
        assert_eq!(read(dir.path(), &tail).unwrap().data, b"two\nthree\n");
        let from = ReadLogRequest { name: "worker-a.out".into(), offset: 4, max_bytes: 3, tail_lines: None };
        let piece = read(dir.path(), &from).unwrap();
        assert_eq!((piece.data.as_slice(), piece.next_offset), (&b"two"[..], 7));
        let escape = ReadLogRequest { name: "../secret".into(), offset: 0, max_bytes: 10, tail_lines: None };
        assert!(read(dir.path(), &escape).is_err());
    }
}
