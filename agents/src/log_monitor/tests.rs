//! The log monitor's file handling: names, lines, rotation races, bounded reads, closing and retention.

use super::*;

#[test]
fn file_names_round_trip_and_others_are_ignored() {
    let (worker, job) = (WorkerId::random(), JobId::from_counter(3));
    let name = LogFileName::format(worker, job, 42, true);
    assert_eq!(LogFileName::parse(&name), Some(LogFileName { worker_id: worker, job_id: job, pid: 42, is_err: true }));
    assert_eq!(LogFileName::parse("node.log"), None);
    assert_eq!(LogFileName::parse("worker-zz-1-2.out"), None);
}

#[test]
fn lines_split_keep_partials_follow_markers_and_respect_the_budget() {
    let (mut partial, mut name, mut budget) = (Vec::new(), String::new(), 2);
    let marker = format!("{TASK_NAME_MARKER}greet\n");
    let first = split_lines(&mut partial, format!("{marker}one\ntw").as_bytes(), &mut name, &mut budget);
    assert_eq!(first, Polled { lines: vec![("greet".into(), "one".into())], held_back: 0 });
    assert_eq!(name, "greet");
    let second = split_lines(&mut partial, b"o\nthree\nfour\n", &mut name, &mut budget);
    assert_eq!(second, Polled { lines: vec![("greet".into(), "two".into())], held_back: 2 });
    assert!(partial.is_empty());
}

#[test]
fn truncated_and_rotated_files_are_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LogFileName::format(WorkerId::random(), JobId::from_counter(1), 7, false));
    std::fs::write(&path, "a\nb\n").unwrap();
    let mut tails = HashMap::new();
    discover(dir.path(), &mut tails, 100);
    let tail = tails.get_mut(&path).unwrap();
    let lines = |polled: Polled| polled.lines.into_iter().map(|(_, line)| line).collect::<Vec<_>>();
    assert_eq!(lines(read_new(&path, tail).unwrap()), vec!["a", "b"]);
    std::fs::write(&path, "c\n").unwrap();
    assert_eq!(lines(read_new(&path, tail).unwrap()), vec!["c"]);
    // Rotation: the rest of the old file, then the new one.
    let mut old = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::fs::rename(&path, dir.path().join("rotated")).unwrap();
    std::io::Write::write_all(&mut old, b"e\n").unwrap();
    std::fs::write(&path, "f\n").unwrap();
    assert_eq!(lines(read_new(&path, tail).unwrap()), vec!["e", "f"]);
    std::fs::remove_file(&path).unwrap();
    assert!(read_new(&path, tail).is_err());
}

#[test]
fn a_rotation_between_polls_is_read_once_whatever_the_timing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LogFileName::format(WorkerId::random(), JobId::from_counter(1), 7, false));
    let backup = |index: u32| dir.path().join(format!("{}.{index}", path.file_name().unwrap().to_string_lossy()));
    let rotate = |next: &str| {
        for index in (1..3).rev() {
            let _ = std::fs::rename(backup(index), backup(index + 1));
        }
        std::fs::rename(&path, backup(1)).unwrap();
        std::fs::write(&path, next).unwrap();
    };
    let lines = |polled: Polled| polled.lines.into_iter().map(|(_, line)| line).collect::<Vec<_>>();
    std::fs::write(&path, "1\n2\n").unwrap();
    let mut tails = HashMap::new();
    discover(dir.path(), &mut tails, 1000);
    let tail = tails.get_mut(&path).unwrap();
    let mut seen = lines(read_new(&path, tail).unwrap());
    // Two rotations between polls, then another: each copy is read once, in order.
    rotate("3\n");
    rotate("4\n");
    seen.extend(lines(read_new(&path, tail).unwrap()));
    let opened = tail.inode;
    rotate("5\n");
    assert_ne!(std::fs::metadata(&path).unwrap().ino(), opened);
    seen.extend(lines(read_new(&path, tail).unwrap()));
    seen.extend(lines(read_new(&path, tail).unwrap()));
    assert_eq!(seen, ["1", "2", "3", "4", "5"], "every line once, in order");

    // The race itself: the file is rotated after the poll looked at the name but
    // before it opened it. The backup listing must stop at the opened file.
    let mut racing = HashMap::new();
    std::fs::write(&path, "6\n").unwrap();
    for index in 1..=3 {
        let _ = std::fs::remove_file(backup(index));
    }
    discover(dir.path(), &mut racing, 1000);
    let tail = racing.get_mut(&path).unwrap();
    let current = File::open(&path).unwrap();
    let current_inode = current.metadata().unwrap().ino();
    rotate("7\n");
    assert!(
        backups_between(&path, None, current_inode).is_empty(),
        "the opened file, now a backup, is not read as a backup too"
    );
    tail.handle = Some(current);
    tail.inode = current_inode;
    let mut seen = lines(read_new(&path, tail).unwrap());
    seen.extend(lines(read_new(&path, tail).unwrap()));
    assert_eq!(seen, ["6", "7"]);
}

#[test]
fn a_line_without_a_newline_is_cut_at_64_kib() {
    let (mut partial, mut name, mut budget) = (Vec::new(), String::new(), 100);
    let long = vec![b'x'; 3 * MAX_LINE_BYTES / 2];
    let polled = split_lines(&mut partial, &long, &mut name, &mut budget);
    assert_eq!(polled.lines.len(), 1);
    assert_eq!(polled.lines[0].1.len(), MAX_LINE_BYTES + CUT_MARKER.len());
    assert!(polled.lines[0].1.ends_with(CUT_MARKER));
    assert_eq!(partial.len(), MAX_LINE_BYTES / 2, "the rest waits for its newline or the next cut");
    let polled = split_lines(&mut partial, b"end\n", &mut name, &mut budget);
    assert_eq!(polled.lines[0].1.len(), MAX_LINE_BYTES / 2 + 3);
    assert!(partial.is_empty());
}

#[test]
fn the_file_of_a_worker_that_exited_is_closed_once_drained() {
    let dir = tempfile::tempdir().unwrap();
    // A pid that is not running: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let path = dir.path().join(LogFileName::format(WorkerId::random(), JobId::from_counter(1), pid, false));
    std::fs::write(&path, "last words").unwrap();
    let mut tails = HashMap::new();
    discover(dir.path(), &mut tails, 100);
    let tail = tails.get_mut(&path).unwrap();
    let mut lines = Vec::new();
    for _ in 0..=QUIET_POLLS_BEFORE_CLOSE {
        let mut polled = read_new(&path, tail).unwrap();
        close_if_finished(tail, &mut polled);
        lines.extend(polled.lines.into_iter().map(|(_, line)| line));
    }
    assert!(tail.done && tail.handle.is_none(), "closed");
    assert_eq!(lines, ["last words"], "the unfinished last line is sent when the file closes");
}

#[test]
fn retention_parses_and_old_logs_of_exited_workers_go() {
    assert_eq!(parse_retention("7d"), Ok(Duration::from_secs(7 * 86_400)));
    assert_eq!(parse_retention("90"), Ok(Duration::from_secs(90)));
    assert!(parse_retention("3w").unwrap_err().contains("unknown unit"));
    assert!(parse_retention("0s").is_err());

    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = child.id();
    child.wait().unwrap();
    let running = std::process::id();
    let name = |pid| LogFileName::format(WorkerId::random(), JobId::from_counter(1), pid, false);
    let (old, rotated, alive) = (name(gone), format!("{}.1", name(gone)), name(running));
    for file in [&old, &rotated, &alive] {
        std::fs::write(dir.path().join(file), "x\n").unwrap();
    }
    std::fs::write(dir.path().join("node.log"), "kept").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    assert!(expire_logs(dir.path(), Duration::from_secs(7200), later).is_empty(), "not old enough");
    let mut removed = expire_logs(dir.path(), Duration::from_secs(60), later);
    removed.sort();
    let mut expected = vec![dir.path().join(&old), dir.path().join(&rotated)];
    expected.sort();
    assert_eq!(removed, expected, "a running worker's file and other files stay");
}

#[test]
fn rotated_files_are_read_in_bounded_slices_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LogFileName::format(WorkerId::random(), JobId::from_counter(1), 7, false));
    // 20 MiB of numbered 64-byte lines, rotated away before the first look.
    let line = |number: usize| format!("{number:063}\n");
    let count = (20 << 20) / 64;
    let text: String = (0..count).map(line).collect();
    std::fs::write(&path, &text).unwrap();
    let mut first_copy = path.as_os_str().to_owned();
    first_copy.push(".1");
    std::fs::rename(&path, &first_copy).unwrap();
    std::fs::write(&path, line(count)).unwrap();
    let mut tails = HashMap::new();
    discover(dir.path(), &mut tails, u64::MAX);
    let tail = tails.get_mut(&path).unwrap();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let polled = read_new(&path, tail).unwrap();
        assert!(polled.lines.len() as u64 * 64 <= MAX_BYTES_PER_POLL, "one poll reads at most 8 MiB");
        seen.extend(polled.lines.into_iter().map(|(_, line)| line.parse::<usize>().unwrap()));
    }
    assert_eq!(seen, (0..=count).collect::<Vec<_>>(), "every line once, in order");
}

#[test]
fn a_100_mib_line_without_a_newline_never_holds_more_than_64_kib() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LogFileName::format(WorkerId::random(), JobId::from_counter(1), 7, false));
    std::fs::write(&path, vec![b'x'; 100 << 20]).unwrap();
    let mut tails = HashMap::new();
    discover(dir.path(), &mut tails, u64::MAX);
    let tail = tails.get_mut(&path).unwrap();
    let mut cut = 0;
    for _ in 0..20 {
        let polled = read_new(&path, tail).unwrap();
        assert!(tail.partial.len() <= MAX_LINE_BYTES, "held {} bytes", tail.partial.len());
        cut += polled.lines.iter().filter(|(_, line)| line.ends_with(CUT_MARKER)).count();
    }
    assert_eq!(cut, (100 << 20) / MAX_LINE_BYTES - 1, "sent in 64 KiB pieces; the last waits for its newline");
}
