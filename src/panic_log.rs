//! Panics as log events: the hook [`install`] sets sends a panic through
//! `tracing` (message, place, thread, and a backtrace when
//! `RUST_BACKTRACE` asks for one) instead of the standard hook's bare
//! stderr text, so `--log-format json` output stays one JSON object per
//! line and a panic reaches wherever the logs go.

use std::panic::PanicHookInfo;

/// Replaces the process's panic hook with [`log_panic`]. Called once the
/// log subscriber is set up (`jobd serve`, `jobd work`).
pub fn install() {
    std::panic::set_hook(Box::new(log_panic));
}

/// The hook: one `error` event for the panic.
pub fn log_panic(info: &PanicHookInfo<'_>) {
    let payload = info.payload();
    let message = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(a panic payload that is not text)");
    let location = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_default();
    let thread = std::thread::current();
    let thread = thread.name().unwrap_or("unnamed");
    let backtrace = std::backtrace::Backtrace::capture();
    if backtrace.status() == std::backtrace::BacktraceStatus::Captured {
        tracing::error!(
            panic.message = message,
            panic.location = %location,
            thread,
            backtrace = %backtrace,
            "panic"
        );
    } else {
        tracing::error!(
            panic.message = message,
            panic.location = %location,
            thread,
            "panic"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// Log output collected in memory.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// With the hook installed, a panic is one JSON log line carrying its
    /// message and place, and nothing else is written.
    #[test]
    fn a_panic_is_one_json_log_event() {
        let buf = Buffer::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let previous = std::panic::take_hook();
        super::install();
        let caught = tracing::subscriber::with_default(subscriber, || {
            std::panic::catch_unwind(|| panic!("boom {}", 7))
        });
        std::panic::set_hook(previous);
        assert!(caught.is_err());
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["fields"]["message"], "panic");
        assert_eq!(v["fields"]["panic.message"], "boom 7");
        let place = v["fields"]["panic.location"].as_str().unwrap();
        assert!(place.starts_with("src/panic_log.rs:"), "{place}");
    }
}
