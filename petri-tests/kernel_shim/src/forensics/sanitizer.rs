//! AddressSanitizer's and LeakSanitizer's reports, whole and symbolised, for a failure text a
//! kernel maintainer can act on.
//!
//! A report is kept from its `ERROR:` line to its end: the access and its backtrace, where
//! the address is (a dead frame and the variable in it, or a heap region with its allocation
//! and free stacks), the threads' creation stacks and the summary, without the shadow-memory
//! map and its legend (bytes of the sanitizer's own bookkeeping). Each frame is rewritten as
//! `#N function file:LINE`; a frame the sanitizer could not symbolise (`(exe+0xb859)`, when no
//! symbolizer was found) is symbolised here with `addr2line`, inlined frames included.

use super::symbolizer::Symbolizer;
use super::{Frame, Location};
use std::path::Path;

/// A sanitizer's report, symbolised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SanitizerReport {
    /// What the sanitizer found, from its `ERROR:` line (`AddressSanitizer:
    /// stack-use-after-scope on address 0x...`).
    pub headline: String,
    /// The whole report, one line per line, every frame as `#N function file:LINE`.
    pub text: String,
    /// The first backtrace (the faulting access, or the first leak's allocation).
    pub frames: Vec<Frame>,
    /// Where the address was, in one line: the variable and the dead frame it lived in, or
    /// the heap region and the function that allocated it.
    pub object: Option<String>,
}

/// A frame line of a sanitizer report: `#N 0xPC in FUNCTION FILE:LINE[:COL]`, `#N 0xPC in
/// FUNCTION (MODULE+0xOFF)` or `#N 0xPC (MODULE+0xOFF)`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RawFrame {
    index: u32,
    function: Option<String>,
    /// `FILE:LINE[:COL]` as printed.
    place: Option<String>,
    /// The module and offset of an unsymbolised frame.
    module: Option<(String, u64)>,
}

fn parse_frame(line: &str) -> Option<RawFrame> {
    let rest = line.trim().strip_prefix('#')?;
    let (index, rest) = rest.split_once(char::is_whitespace)?;
    let index: u32 = index.parse().ok()?;
    let (pc, rest) = rest
        .trim_start()
        .split_once(' ')
        .unwrap_or((rest.trim(), ""));
    pc.strip_prefix("0x")?;
    let rest = rest.trim();
    let (function, rest) = match rest.strip_prefix("in ") {
        Some(r) => {
            let (f, r) = r.split_once(' ').unwrap_or((r, ""));
            (Some(f.to_owned()), r.trim())
        }
        None => (None, rest),
    };
    let module = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .and_then(|r| r.rsplit_once("+0x"))
        .and_then(|(m, off)| Some((m.to_owned(), u64::from_str_radix(off, 16).ok()?)));
    let place = (module.is_none() && !rest.is_empty()).then(|| rest.to_owned());
    Some(RawFrame {
        index,
        function,
        place,
        module,
    })
}

/// `FILE:LINE[:COL]` as a file and a line.
fn split_place(place: &str) -> (String, u32) {
    let mut parts = place.rsplitn(3, ':');
    let (last, mid, first) = (parts.next(), parts.next(), parts.next());
    match (first, mid, last) {
        (Some(f), Some(l), Some(c)) if c.parse::<u32>().is_ok() && l.parse::<u32>().is_ok() => {
            (f.to_owned(), l.parse().unwrap_or(0))
        }
        (_, Some(_), Some(l)) if l.parse::<u32>().is_ok() => {
            let f = place.rsplit_once(':').map_or(place, |(f, _)| f);
            (f.to_owned(), l.parse().unwrap_or(0))
        }
        _ => (place.to_owned(), 0),
    }
}

/// The file as a report shows it: the runtime's and the shim's from `shim/`, others by base
/// name (`pci-hyperv.c`).
pub fn short_file(file: &str) -> &str {
    if let Some(at) = file
        .find("shim/runtime/")
        .or_else(|| file.find("shim/include/"))
    {
        return file.get(at..).unwrap_or(file);
    }
    file.rsplit('/').next().unwrap_or(file)
}

/// `function file:LINE` (or `function file` when the line is unknown).
pub fn frame_text(location: &Location) -> String {
    let file = short_file(&location.file);
    if location.function.is_empty() {
        file.to_owned()
    } else if location.line > 0 {
        format!("{} {file}:{}", location.function, location.line)
    } else if file.is_empty() {
        location.function.clone()
    } else {
        format!("{} {file}", location.function)
    }
}

/// Whether `module` (as the sanitizer printed it) is the executable being symbolised.
fn is_exe(module: &str, exe: &Path) -> bool {
    let name = |s: &str| s.rsplit('/').next().unwrap_or(s).to_owned();
    exe.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .is_some_and(|n| n == name(module))
}

/// A frame's locations, innermost first (several when inlined), or None when nothing names
/// it.
fn locate(frame: &RawFrame, symbolizer: &mut Symbolizer) -> Vec<Location> {
    if let Some(place) = &frame.place {
        let (file, line) = split_place(place);
        return vec![Location {
            function: frame.function.clone().unwrap_or_else(|| "??".to_owned()),
            file,
            line,
        }];
    }
    if let Some((module, offset)) = &frame.module {
        if is_exe(module, symbolizer.exe()) {
            let found = symbolizer.frames(*offset).to_vec();
            if !found.is_empty() {
                return found;
            }
        }
        let base = module.rsplit('/').next().unwrap_or(module);
        return vec![Location {
            function: frame.function.clone().unwrap_or_default(),
            file: format!("{base}+{offset:#x}"),
            line: 0,
        }];
    }
    frame.function.as_ref().map_or_else(Vec::new, |f| {
        vec![Location {
            function: f.clone(),
            file: String::new(),
            line: 0,
        }]
    })
}

/// The lines of the sanitizer's report in a guest's stderr, from its `ERROR:` line.
fn report_lines(stderr: &str) -> Option<Vec<&str>> {
    let mut lines = stderr.lines().skip_while(|l| {
        !(l.contains("ERROR: AddressSanitizer") || l.contains("ERROR: LeakSanitizer"))
    });
    let first = lines.next()?;
    let mut out = vec![first];
    let mut shadow = false;
    let mut hint = false;
    for line in lines {
        if line.starts_with("==") && line.ends_with("==ABORTING") {
            break;
        }
        if line.starts_with("kshim: ") {
            continue;
        }
        if line.starts_with("Shadow byte") {
            shadow = true;
            continue;
        }
        if shadow {
            if line.starts_with(' ') || line.starts_with("=>") {
                continue;
            }
            shadow = false;
        }
        // The sanitizer's hint about custom stack switching (continued on the next line).
        if line.starts_with("HINT: ") {
            hint = true;
            continue;
        }
        if hint && line.starts_with("      (") {
            continue;
        }
        hint = false;
        out.push(line);
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    Some(out)
}

/// The sanitizer's report in `stderr`, symbolised against `exe`; None when there is none.
pub fn sanitizer_report(stderr: &str, exe: &Path) -> Option<SanitizerReport> {
    let lines = report_lines(stderr)?;
    let mut symbolizer = Symbolizer::new(exe);
    let raw: Vec<Option<RawFrame>> = lines.iter().map(|l| parse_frame(l)).collect();
    symbolizer.resolve(
        raw.iter()
            .flatten()
            .filter_map(|f| f.module.as_ref())
            .filter(|(m, _)| is_exe(m, exe))
            .map(|(_, off)| *off),
    );
    let mut text = Vec::with_capacity(lines.len());
    let mut frames = Vec::new();
    let mut first_done = false;
    let mut located_frame: Option<String> = None;
    let mut allocator: Option<String> = None;
    let mut wants_frame = false;
    let mut wants_alloc = false;
    for (line, frame) in lines.iter().zip(&raw) {
        let Some(frame) = frame else {
            if !frames.is_empty() {
                first_done = true;
            }
            wants_frame |= line.contains("is located in stack of thread");
            wants_alloc |= line.starts_with("allocated by thread");
            // `==PID==ERROR: ...` without the process id, which differs run to run.
            let line = line
                .strip_prefix("==")
                .and_then(|l| l.split_once("=="))
                .map_or(*line, |(_, l)| l);
            text.push(line.to_owned());
            continue;
        };
        let found = locate(frame, &mut symbolizer);
        let Some((inner, outer)) = found.split_first() else {
            text.push(format!("    #{} ??", frame.index));
            continue;
        };
        let mut shown = format!("    #{} {}", frame.index, frame_text(inner));
        for o in outer {
            shown.push_str(&format!(" (inlined into {})", frame_text(o)));
        }
        text.push(shown);
        if !first_done {
            frames.push(Frame {
                index: frame.index,
                location: inner.clone(),
            });
        }
        if wants_frame {
            located_frame = Some(frame_text(found.last().unwrap_or(inner)));
            wants_frame = false;
        }
        if wants_alloc && inner.origin() == super::Origin::Driver {
            allocator = Some(frame_text(inner));
            wants_alloc = false;
        }
    }
    let headline = lines
        .first()
        .map(|l| l.split("ERROR: ").nth(1).unwrap_or(l).trim().to_owned())
        .unwrap_or_default();
    let variable = lines
        .iter()
        .find(|l| l.contains("<== Memory access"))
        .and_then(|l| l.split("<==").next())
        .map(|v| v.trim().to_owned());
    let region = lines
        .iter()
        .find(|l| l.contains("-byte region"))
        .and_then(|l| l.split(" is located ").nth(1))
        .map(|r| r.split(" [").next().unwrap_or(r).trim().to_owned());
    let object = match (variable, located_frame, region, allocator) {
        (Some(v), Some(f), _, _) => Some(format!("{v} in the stack frame of {f}")),
        (None, Some(f), _, _) => Some(format!("in the stack frame of {f}")),
        (_, None, Some(r), Some(a)) => Some(format!("{r}, allocated in {a}")),
        (_, None, Some(r), None) => Some(r),
        _ => None,
    };
    Some(SanitizerReport {
        headline,
        text: text.join("\n"),
        frames,
        object,
    })
}

#[cfg(test)]
mod tests;
