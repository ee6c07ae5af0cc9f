//! The process's log output: env_logger's filter (`RUST_LOG`) and its default line format,
//! written through a buffer that a background thread flushes, so a request's access-log
//! line costs no `write(2)` of its own.
//!
//! Lines are the bytes env_logger writes without colour:
//! `[2026-11-26T05:13:00Z INFO  llmux::proxy::attempt] message`, continuation lines indented
//! by four spaces. Info and lower lines reach stderr within [`FLUSH_AFTER`]; a warning or an
//! error flushes everything before it at once; so does the end of `main`, a panic, and a
//! buffer past [`FLUSH_AT`] bytes. On a terminal (or with `RUST_LOG_STYLE=always`) the stock
//! env_logger writes instead, with its colours.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

/// How long an info line may wait in the buffer.
pub const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// Buffered bytes that make the writer flush at once.
pub const FLUSH_AT: usize = 32 * 1024;

/// Installs the logger for the process (`info` unless `RUST_LOG` says otherwise).
pub fn init() {
    let env = env_logger::Env::default().default_filter_or("info");
    let mut builder = env_logger::Builder::from_env(env);
    let style = std::env::var("RUST_LOG_STYLE").unwrap_or_default();
    if std::io::stderr().is_terminal() || style == "always" {
        builder.init();
        return;
    }
    let filter = builder.build();
    let max = filter.filter();
    let out: &'static LogBuffer = Box::leak(Box::new(LogBuffer::new(Box::new(std::io::stderr()))));
    out.start_flusher();
    if log::set_boxed_logger(Box::new(BufferedLog { filter, out })).is_ok() {
        log::set_max_level(max);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            out.flush_unless_busy();
            previous(info);
        }));
    }
}

/// A `log::Log` writing env_logger's format into a [`LogBuffer`].
struct BufferedLog {
    /// Used for `RUST_LOG` matching only.
    filter: env_logger::Logger,
    out: &'static LogBuffer,
}

impl log::Log for BufferedLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.filter.matches(record) {
            self.out.record(record);
        }
    }

    fn flush(&self) {
        self.out.flush();
    }
}

/// Log lines waiting for the flusher, and where they go.
pub struct LogBuffer {
    pending: Mutex<Pending>,
    /// Held while bytes are written out, so flushes keep their order.
    sink: Mutex<Sink>,
    flusher: OnceLock<std::thread::Thread>,
}

struct Pending {
    buf: Vec<u8>,
    /// The second `stamp` was formatted for.
    second: u64,
    stamp: [u8; 20],
}

struct Sink {
    out: Box<dyn Write + Send>,
    /// The previous buffer, emptied, swapped in for the next batch (no allocation).
    spare: Vec<u8>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

thread_local! {
    /// Where a line is formatted before it is appended under the lock.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl LogBuffer {
    /// A buffer writing to `out`; without [`start_flusher`](Self::start_flusher) info lines
    /// wait for an explicit [`flush`](Self::flush).
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        LogBuffer {
            pending: Mutex::new(Pending {
                buf: Vec::with_capacity(FLUSH_AT),
                second: u64::MAX,
                stamp: [0; 20],
            }),
            sink: Mutex::new(Sink {
                out,
                spare: Vec::with_capacity(FLUSH_AT),
            }),
            flusher: OnceLock::new(),
        }
    }

    /// Starts the thread that writes buffered lines out [`FLUSH_AFTER`] after the first.
    pub fn start_flusher(&'static self) {
        let spawned = std::thread::Builder::new()
            .name("llmux-log".into())
            .spawn(move || loop {
                std::thread::park();
                std::thread::sleep(FLUSH_AFTER);
                self.flush();
            });
        if let Ok(handle) = spawned {
            let _ = self.flusher.set(handle.thread().clone());
        }
    }

    /// Formats and buffers one record.
    pub fn record(&self, record: &log::Record<'_>) {
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                self.append(record, &mut line);
            }
            // A record logged while formatting another one (a `Display` that logs).
            Err(_) => self.append(record, &mut Vec::new()),
        });
    }

    fn append(&self, record: &log::Record<'_>, line: &mut Vec<u8>) {
        format_body(record, line);
        let level = record.level();
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let (was_empty, full) = {
            let mut p = lock(&self.pending);
            if p.second != now {
                p.stamp = rfc3339_seconds(now);
                p.second = now;
            }
            let was_empty = p.buf.is_empty();
            let Pending { buf, stamp, .. } = &mut *p;
            buf.push(b'[');
            buf.extend_from_slice(stamp);
            buf.push(b' ');
            buf.extend_from_slice(level_text(level).as_bytes());
            let target = record.target();
            if !target.is_empty() {
                buf.push(b' ');
                buf.extend_from_slice(target.as_bytes());
            }
            buf.extend_from_slice(b"] ");
            buf.extend_from_slice(line);
            buf.push(b'\n');
            (was_empty, buf.len() >= FLUSH_AT)
        };
        if full || level <= log::Level::Warn {
            self.flush();
        } else if was_empty {
            if let Some(t) = self.flusher.get() {
                t.unpark();
            }
        }
    }

    /// Writes out everything buffered.
    pub fn flush(&self) {
        let mut sink = lock(&self.sink);
        self.write_out(&mut sink);
    }

    /// A flush that gives up rather than wait (from a panic hook, which may run on a thread
    /// that holds the lock).
    fn flush_unless_busy(&self) {
        if let Ok(mut sink) = self.sink.try_lock() {
            self.write_out(&mut sink);
        }
    }

    fn write_out(&self, sink: &mut Sink) {
        let Sink { out, spare } = sink;
        {
            let mut p = lock(&self.pending);
            if p.buf.is_empty() {
                return;
            }
            std::mem::swap(&mut p.buf, spare);
        }
        let _ = out.write_all(spare);
        let _ = out.flush();
        spare.clear();
    }
}

/// `INFO `, `ERROR`: env_logger's `{level:<5}`.
fn level_text(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "ERROR",
        log::Level::Warn => "WARN ",
        log::Level::Info => "INFO ",
        log::Level::Debug => "DEBUG",
        log::Level::Trace => "TRACE",
    }
}

/// The message, with env_logger's four-space indent after each newline.
fn format_body(record: &log::Record<'_>, line: &mut Vec<u8>) {
    match record.args().as_str() {
        Some(s) => line.extend_from_slice(s.as_bytes()),
        None => {
            let _ = Plain(line).write_fmt(*record.args());
        }
    }
    // One scan of the whole message (access-log lines have no newline).
    if let Some(first) = memchr::memchr(b'\n', line) {
        let rest = line.split_off(first);
        for part in rest[1..].split(|b| *b == b'\n') {
            line.extend_from_slice(b"\n    ");
            line.extend_from_slice(part);
        }
    }
}

/// `fmt::Write` into a byte buffer.
struct Plain<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Plain<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// `2026-11-26T05:13:00Z` (humantime's `format_rfc3339_seconds`, as env_logger prints it).
fn rfc3339_seconds(secs: u64) -> [u8; 20] {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = [0u8; 20];
    let mut s = String::with_capacity(20);
    let _ = write!(
        s,
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z"
    );
    let n = s.len().min(20);
    out[..n].copy_from_slice(&s.as_bytes()[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A sink tests can read.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(out: &LogBuffer, level: log::Level, target: &str, args: std::fmt::Arguments<'_>) {
        out.record(
            &log::Record::builder()
                .level(level)
                .target(target)
                .args(args)
                .build(),
        );
    }

    #[test]
    fn lines_match_env_logger_and_wait_for_a_flush() {
        let sink = Shared::default();
        let out = LogBuffer::new(Box::new(sink.clone()));
        let rid = "req_1";
        line(
            &out,
            log::Level::Info,
            "llmux::proxy::attempt",
            format_args!("request_id={rid} status={}", 200),
        );
        line(&out, log::Level::Debug, "", format_args!("two\nlines"));
        line(
            &out,
            log::Level::Trace,
            "t",
            format_args!("{}\n\n{}\n", 1, 2),
        );
        assert!(lock(&sink.0).is_empty(), "info lines are buffered");
        out.flush();
        let text = String::from_utf8(lock(&sink.0).clone()).unwrap();
        let lines: Vec<&str> = text.split_inclusive('\n').collect();
        assert_eq!(lines.len(), 7, "{text}");
        let stamp = &lines[0][1..21];
        assert_eq!(
            lines[0],
            format!("[{stamp} INFO  llmux::proxy::attempt] request_id=req_1 status=200\n")
        );
        assert_eq!(lines[1], format!("[{stamp} DEBUG] two\n"));
        assert_eq!(lines[2], "    lines\n");
        assert_eq!(lines[3], format!("[{stamp} TRACE t] 1\n"));
        assert_eq!(lines[4..], ["    \n", "    2\n", "    \n"]);
        line(&out, log::Level::Warn, "x", format_args!("now"));
        assert!(
            String::from_utf8(lock(&sink.0).clone())
                .unwrap()
                .ends_with(" WARN  x] now\n"),
            "warnings are written at once"
        );
    }

    #[test]
    fn lines_are_byte_identical_to_env_logger_without_colour() {
        use log::Log as _;
        let theirs = Shared::default();
        let stock = env_logger::Builder::new()
            .filter_level(log::LevelFilter::Trace)
            .write_style(env_logger::WriteStyle::Never)
            .target(env_logger::Target::Pipe(Box::new(theirs.clone())))
            .build();
        let ours = Shared::default();
        let out = LogBuffer::new(Box::new(ours.clone()));
        let records: [(log::Level, &str, std::fmt::Arguments<'_>); 5] = [
            (
                log::Level::Info,
                "llmux::proxy::attempt",
                format_args!("request_id={} model={} status={}", "req_1", "gpt-4o", 200),
            ),
            (
                log::Level::Warn,
                "pingora_core::server",
                format_args!("static text"),
            ),
            (log::Level::Error, "", format_args!("no target {}", -1)),
            (log::Level::Debug, "x", format_args!("a\n\nb\n{}", "c\nd")),
            (
                log::Level::Trace,
                "ünï",
                format_args!("{:>6}|{:<4}|", 1.5, 'x'),
            ),
        ];
        for (level, target, args) in records {
            let record = log::Record::builder()
                .level(level)
                .target(target)
                .args(args)
                .build();
            stock.log(&record);
            out.record(&record);
        }
        out.flush();
        let strip = |b: &Shared| {
            let text = String::from_utf8(lock(&b.0).clone()).unwrap();
            // Timestamps may fall in different seconds: compare the rest.
            text.lines()
                .map(|l| match l.strip_prefix('[') {
                    Some(rest) if rest.len() > 20 => rest[20..].to_owned(),
                    _ => l.to_owned(),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&ours), strip(&theirs));
        assert_eq!(strip(&ours).len(), 9);
    }

    #[test]
    fn timestamps_are_rfc3339_seconds() {
        let cases = [
            (0, "1970-01-01T00:00:00Z"),
            (951_782_400, "2000-02-29T00:00:00Z"),
            (1_798_761_599, "2026-12-31T23:59:59Z"),
            (4_107_542_400, "2100-03-01T00:00:00Z"),
        ];
        for (secs, want) in cases {
            assert_eq!(std::str::from_utf8(&rfc3339_seconds(secs)).unwrap(), want);
        }
    }
}
