//! The record file: a header line, then one [`Event`] per line, as JSON.
//!
//! ```text
//! {"tsm_trace_record":2,"tsm_trace_version":"0.1.0","kernel":"7.3.4+deb13-amd64","boot_id":"…","realtime_offset_ns":…}
//! {"probe":"tsm_bind","start_ns":...,"end_ns":...,"tgid":...,"vm":{"id":"vm#3f9a0c51e2b7","pid":4242},...}
//! ```
//! Reading validates every line and names the line and the problem on error.
//!
//! A record holds no kernel address: VMs are their keyed hash (`vm#…`, the same name the
//! live session printed; see [`super::vm_id`]) and returned pointers their meaning. Format 1
//! (before that) stored `struct kvm *` pointers; it is refused with an explanation.

use std::io::{BufRead, Read, Write};

use serde::{Deserialize, Serialize};

use super::Event;

/// 2: VMs by keyed hash (`"vm":{"id":"vm#…"}`), pointer returns reduced to 0/errno/1.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    pub tsm_trace_record: u32,
    pub tsm_trace_version: String,
    #[serde(default)]
    pub kernel: String,
    /// The boot the events' CLOCK_MONOTONIC times belong to (empty in older captures).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC when the capture started: `replay` prints the
    /// wall-clock times the live session printed (absent in older captures: times are then
    /// relative to the first event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realtime_offset_ns: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: reading line {line}")]
    Io {
        path: String,
        line: usize,
        source: std::io::Error,
    },
    #[error(
        "{path}: line 1 is not a tsm-trace record header (expected {{\"tsm_trace_record\":{FORMAT_VERSION},...}})"
    )]
    Header {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{path}: line 1 is not a tsm-trace record header (expected {{\"tsm_trace_record\":{FORMAT_VERSION},...}}): the file is empty"
    )]
    Empty { path: String },
    #[error(
        "{path}: record format version {found} is not supported (this tsm-trace reads {FORMAT_VERSION})"
    )]
    Version { path: String, found: u32 },
    #[error(
        "{path}: record format 1 names VMs by their kernel address (struct kvm pointer), which tsm-trace no longer reads or writes; this tsm-trace reads format {FORMAT_VERSION} (VMs by keyed hash): record the capture again with this version"
    )]
    PointerFormat { path: String },
    #[error("{path}:{line}: not a tsm-trace event")]
    Line {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}:{line}: end_ns {end_ns} precedes start_ns {start_ns}")]
    TimeReversed {
        path: String,
        line: usize,
        start_ns: u64,
        end_ns: u64,
    },
}

/// Writes the header and then events.
pub struct Writer<W: Write> {
    out: W,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W, kernel: &str) -> std::io::Result<Self> {
        let header = Header {
            tsm_trace_record: FORMAT_VERSION,
            tsm_trace_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel: kernel.to_string(),
            boot_id: crate::clock::boot_id(),
            realtime_offset_ns: Some(crate::clock::realtime_offset_ns()),
        };
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        Ok(Writer { out })
    }

    pub fn write(&mut self, ev: &Event) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, ev)?;
        self.out.write_all(b"\n")
    }

    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// The longest line read (an event is a few hundred bytes).
pub const MAX_LINE: usize = crate::files::cap::RECORD_LINE as usize;

/// One line read: its text, and whether a newline ended it (the last line of a capture cut
/// short by a killed writer has none).
struct Line {
    text: String,
    ended: bool,
}

/// Lines of at most [`MAX_LINE`] bytes; a longer one is an error, not an allocation.
fn capped_lines(mut input: impl BufRead) -> impl Iterator<Item = std::io::Result<Line>> {
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let mut buf = Vec::new();
        let r = (&mut input)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf);
        match r {
            Err(e) => {
                done = true;
                Some(Err(e))
            }
            Ok(0) => None,
            Ok(_) => {
                let ended = buf.last() == Some(&b'\n');
                if ended {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                } else if buf.len() > MAX_LINE {
                    done = true;
                    return Some(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("line longer than {MAX_LINE} bytes"),
                    )));
                }
                Some(
                    String::from_utf8(buf)
                        .map(|text| Line { text, ended })
                        .map_err(|_| {
                            std::io::Error::new(std::io::ErrorKind::InvalidData, "not UTF-8")
                        }),
                )
            }
        }
    })
}

/// A capture as read: every whole event, and the torn last line if there was one.
#[derive(Debug)]
pub struct Capture {
    pub header: Header,
    /// In file order.
    pub events: Vec<Event>,
    /// The last line, cut short (no newline, not a whole event): a writer killed mid-line.
    /// The events before it are whole and were read.
    pub torn: Option<Torn>,
}

/// The torn last line of a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Torn {
    pub line: usize,
    pub bytes: usize,
    pub reason: String,
}

impl Torn {
    /// The warning `replay` prints.
    pub fn warning(&self, path: &str) -> String {
        format!(
            "{path}:{}: the last line is cut short ({} bytes, no newline: {}), as a `trace --record` that was killed leaves it; replayed the {} lines before it",
            self.line,
            self.bytes,
            self.reason,
            self.line - 1
        )
    }
}

/// Reads a whole record: the header and every event, in file order. Blank lines are skipped.
/// A torn last line is an error here; [`read_capture`] reads what is whole around it.
pub fn read_all(input: impl BufRead, path: &str) -> Result<(Header, Vec<Event>), RecordError> {
    let (c, torn) = read(input, path)?;
    if let (Some(t), Some(source)) = (c.torn, torn) {
        return Err(RecordError::Line {
            path: path.into(),
            line: t.line,
            source,
        });
    }
    Ok((c.header, c.events))
}

/// Reads a capture: the header and every event, in file order. Blank lines are skipped. A
/// malformed line is an error naming it, except the last line without a newline, which a
/// killed writer leaves: it is returned as [`Capture::torn`].
pub fn read_capture(input: impl BufRead, path: &str) -> Result<Capture, RecordError> {
    read(input, path).map(|(c, _)| c)
}

/// [`read_capture`], and the parse error of the torn last line (for [`read_all`]).
fn read(
    input: impl BufRead,
    path: &str,
) -> Result<(Capture, Option<serde_json::Error>), RecordError> {
    let mut lines = capped_lines(input).enumerate().peekable();
    let header_line = match lines.next() {
        Some((_, Ok(l))) => l.text,
        Some((_, Err(source))) => {
            return Err(RecordError::Io {
                path: path.into(),
                line: 1,
                source,
            });
        }
        None => return Err(RecordError::Empty { path: path.into() }),
    };
    let header: Header =
        serde_json::from_str(&header_line).map_err(|source| RecordError::Header {
            path: path.into(),
            source,
        })?;
    if header.tsm_trace_record == 1 {
        return Err(RecordError::PointerFormat { path: path.into() });
    }
    if header.tsm_trace_record != FORMAT_VERSION {
        return Err(RecordError::Version {
            path: path.into(),
            found: header.tsm_trace_record,
        });
    }
    let mut events = Vec::new();
    let mut torn = None;
    let mut torn_error = None;
    while let Some((i, line)) = lines.next() {
        let n = i + 1;
        let line = line.map_err(|source| RecordError::Io {
            path: path.into(),
            line: n,
            source,
        })?;
        if line.text.trim().is_empty() {
            continue;
        }
        let last = !line.ended && lines.peek().is_none();
        let ev = match serde_json::from_str::<Event>(&line.text) {
            Ok(ev) => ev,
            Err(e) if last => {
                torn = Some(Torn {
                    line: n,
                    bytes: line.text.len(),
                    reason: e.to_string(),
                });
                torn_error = Some(e);
                break;
            }
            Err(source) => {
                return Err(RecordError::Line {
                    path: path.into(),
                    line: n,
                    source,
                });
            }
        };
        if ev.end_ns < ev.start_ns {
            return Err(RecordError::TimeReversed {
                path: path.into(),
                line: n,
                start_ns: ev.start_ns,
                end_ns: ev.end_ns,
            });
        }
        events.push(ev);
    }
    Ok((
        Capture {
            header,
            events,
            torn,
        },
        torn_error,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{ProbeId, Vm, VmId};

    fn ev() -> Event {
        let mut e = Event::new(ProbeId::TsmBind, 10, 20, 1, 2, "qemu".into());
        e.ret = Some(-16);
        e.device = Some("0000:01:00.0".into());
        e.vm = Some(Vm {
            id: VmId::from_bits(0x1000),
            pid: Some(5),
            stats_id: Some("kvm-5".into()),
            vmm: Some(crate::events::VmmName {
                vmm: "firecracker".into(),
                name: "fc-1".into(),
            }),
        });
        e.tdi_id = Some(3);
        e
    }

    /// Captures carry the VMM's name for a VM (format 2 still: an optional field); one
    /// recorded before tsm-trace read it replays with the stats id.
    #[test]
    fn vm_names_in_captures_and_older_captures() {
        let mut buf = Vec::new();
        {
            let mut w = Writer::new(&mut buf, "test").unwrap();
            w.write(&ev()).unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        assert!(
            text.contains("\"vmm\":{\"vmm\":\"firecracker\",\"name\":\"fc-1\"}"),
            "{text}"
        );
        let old = text.replace(",\"vmm\":{\"vmm\":\"firecracker\",\"name\":\"fc-1\"}", "");
        let (_, evs) = read_all(old.as_bytes(), "old").unwrap();
        assert_eq!(&*evs[0].vm.as_ref().unwrap().name(), "kvm-5");
        let (_, evs) = read_all(text.as_bytes(), "new").unwrap();
        assert_eq!(&*evs[0].vm.as_ref().unwrap().name(), "fc-1");
    }

    /// A guest request with every lifecycle field set survives the round trip.
    #[test]
    fn lifecycle_fields_round_trip() {
        let mut e = Event::new(ProbeId::PciTsmGuestReq, 10, 20, 1, 2, "qemu".into());
        e.ret = Some(12);
        e.tsm = Some("tsm0".into());
        e.scope = Some(1);
        e.in_len = Some(64);
        e.out_len = Some(128);
        e.tsm_code = Some(0xdead);
        let mut buf = Vec::new();
        {
            let mut w = Writer::new(&mut buf, "test").unwrap();
            w.write(&e).unwrap();
        }
        let (_, back) = read_all(&buf[..], "test").unwrap();
        assert_eq!(back, vec![e]);
    }

    #[test]
    fn round_trip() {
        let mut buf = Vec::new();
        {
            let mut w = Writer::new(&mut buf, "test").unwrap();
            w.write(&ev()).unwrap();
            w.write(&ev()).unwrap();
        }
        let (h, evs) = read_all(&buf[..], "mem").unwrap();
        assert_eq!(h.kernel, "test");
        assert_eq!(evs, vec![ev(), ev()]);
    }

    /// The error and its causes on one line, as `tsm-trace: error:` and its `caused by:` lines
    /// read.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    #[test]
    fn errors_name_line_and_problem() {
        let text =
            "{\"tsm_trace_record\":2,\"tsm_trace_version\":\"x\"}\n\n{\"probe\":\"tsm_bind\"}\n";
        let err = read_all(text.as_bytes(), "cap.jsonl").unwrap_err();
        let err = chain(&err);
        assert!(
            err.starts_with("cap.jsonl:3: not a tsm-trace event: missing field"),
            "{err}"
        );

        let text = "{\"tsm_trace_record\":2,\"tsm_trace_version\":\"x\"}\n{\"probe\":\"nope\",\"start_ns\":1}\n";
        let err = read_all(text.as_bytes(), "cap.jsonl").unwrap_err();
        let err = chain(&err);
        assert!(
            err.contains("cap.jsonl:2: not a tsm-trace event: unknown variant `nope`"),
            "{err}"
        );

        let err = chain(&read_all("hello\n".as_bytes(), "x").unwrap_err());
        assert!(
            err.contains("line 1 is not a tsm-trace record header"),
            "{err}"
        );

        let text = "{\"tsm_trace_record\":9,\"tsm_trace_version\":\"x\"}\n";
        let err = chain(&read_all(text.as_bytes(), "x").unwrap_err());
        assert!(err.contains("version 9 is not supported"), "{err}");

        // Format 1 held kernel pointers: refused, saying why and what to do.
        let text = "{\"tsm_trace_record\":1,\"tsm_trace_version\":\"x\"}\n";
        let err = read_all(text.as_bytes(), "old.jsonl").unwrap_err();
        let err = chain(&err);
        assert!(
            err.contains("old.jsonl: record format 1 names VMs by their kernel address")
                && err.contains("record the capture again"),
            "{err}"
        );
        // A pointer where the id belongs is an error naming the line.
        let text = "{\"tsm_trace_record\":2,\"tsm_trace_version\":\"x\"}\n{\"probe\":\"tsm_bind\",\"start_ns\":1,\"end_ns\":2,\"tgid\":1,\"tid\":1,\"comm\":\"q\",\"vm\":{\"id\":\"0xffff888012340000\"}}\n";
        let err = read_all(text.as_bytes(), "p.jsonl").unwrap_err();
        let err = chain(&err);
        assert!(
            err.contains("p.jsonl:2: not a tsm-trace event: bad VM id"),
            "{err}"
        );
    }

    /// A line without an end is refused at the cap, not read into memory whole.
    #[test]
    fn overlong_lines_are_errors() {
        let mut text = b"{\"tsm_trace_record\":2,\"tsm_trace_version\":\"x\"}\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', MAX_LINE + 10));
        let err = read_all(&text[..], "big.jsonl").unwrap_err();
        assert_eq!(err.to_string(), "big.jsonl: reading line 2");
        let cause = std::error::Error::source(&err)
            .expect("the cause")
            .to_string();
        assert!(cause.starts_with("line longer than"), "{cause}");
        let err = read_all(&vec![b'{'; MAX_LINE + 1][..], "h").unwrap_err();
        let cause = std::error::Error::source(&err)
            .expect("the cause")
            .to_string();
        assert!(cause.contains("line longer than"), "{err}: {cause}");
        // CRLF files read as well.
        let text = "{\"tsm_trace_record\":2,\"tsm_trace_version\":\"x\"}\r\n";
        assert!(read_all(text.as_bytes(), "crlf").is_ok());
    }

    fn capture_text(n: usize) -> String {
        let mut buf = Vec::new();
        let mut w = Writer::new(&mut buf, "t").unwrap();
        for i in 0..n {
            let mut e = ev();
            e.start_ns = 10 + i as u64;
            e.end_ns = 20 + i as u64;
            w.write(&e).unwrap();
        }
        w.flush().unwrap();
        String::from_utf8(buf).unwrap()
    }

    /// A killed `trace --record` leaves its last line cut short: what is whole is read.
    #[test]
    fn a_torn_last_line_keeps_the_whole_ones() {
        let whole = capture_text(50);
        let next = capture_text(51);
        let last = next.lines().last().unwrap();
        for cut in [1, last.len() / 2, last.len() - 1] {
            let text = format!("{whole}{}", &last[..cut]);
            let c = read_capture(text.as_bytes(), "cap.jsonl").unwrap();
            assert_eq!(c.events.len(), 50, "cut at {cut}");
            let t = c.torn.expect("torn");
            assert_eq!((t.line, t.bytes), (52, cut));
            let w = t.warning("cap.jsonl");
            assert!(
                w.starts_with("cap.jsonl:52: the last line is cut short"),
                "{w}"
            );
            assert!(w.contains("replayed the 51 lines before it"), "{w}");
            // The strict reader names the same line.
            let e = read_all(text.as_bytes(), "cap.jsonl")
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("cap.jsonl:52: "), "{e}");
        }
        // Whole, without a final newline: nothing is torn.
        let c = read_capture(whole.trim_end().as_bytes(), "cap.jsonl").unwrap();
        assert_eq!((c.events.len(), c.torn), (50, None));
    }

    /// Only the last line may be torn: a bad line followed by others is corruption.
    #[test]
    fn a_bad_line_inside_is_still_an_error() {
        let whole = capture_text(3);
        let mut lines: Vec<&str> = whole.lines().collect();
        lines[2] = "{\"probe\":";
        let text = lines.join("\n");
        let e = read_capture(text.as_bytes(), "cap.jsonl")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cap.jsonl:3: "), "{e}");
        // With a newline after it, even the last bad line is an error, not a tear.
        let text = format!("{}\n{{\"probe\":\n", whole.trim_end());
        assert!(read_capture(text.as_bytes(), "cap.jsonl").is_err());
    }
}
