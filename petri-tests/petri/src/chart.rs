//! A message sequence chart of one run as SVG: three lanes (host, relay, guest), one arrow
//! per message in the order they arrived, the relay's holds, coalescing and local answers
//! marked in colour, and the guest's crash marked in red.

use crate::trace::{Lane, Line, Mark, Trace};
use std::fmt::Write;

const LANE_X: [f64; 3] = [140.0, 420.0, 700.0];
const TOP: f64 = 100.0;
const ROW: f64 = 22.0;
const WIDTH: f64 = 1000.0;

fn lane_x(lane: Lane) -> f64 {
    match lane {
        Lane::Host => LANE_X[0],
        Lane::Relay => LANE_X[1],
        Lane::Guest => LANE_X[2],
    }
}

fn colour(mark: Mark) -> &'static str {
    match mark {
        Mark::None => "#333333",
        Mark::Held => "#d97706",
        Mark::Coalesced => "#7c3aed",
        Mark::Local => "#2563eb",
        Mark::Crash => "#dc2626",
        Mark::Choice | Mark::Serviced => "#777777",
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// `text` wrapped at spaces into lines of at most `width` characters (a longer word gets a
/// line of its own): nothing is cut.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    for word in text.split_whitespace() {
        if !current.is_empty() && current.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
    }
    if !current.is_empty() {
        lines.push(current);
    }
    lines
}

/// Whether a line belongs on the chart: messages between lanes, the relay's notes, the
/// host's notes and the crash (not the guest's every step, nor the scheduler's choices).
fn charted(line: &Line) -> bool {
    !matches!(line.mark, Mark::Choice | Mark::Serviced)
        && (line.from != line.to || line.from != Lane::Guest || line.mark == Mark::Crash)
}

/// How many of the guest's steps before the crash the chart shows.
const LAST_STEPS: usize = 8;

/// Characters per line of the crash's text.
const CRASH_WIDTH: usize = 120;

/// What the chart says under a crash: its text, wrapped; then the guest's last steps before
/// it (`#step context function: event`), which show the context that crashed and what it was
/// doing.
fn crash_block(trace: &Trace, crash: &Line) -> Vec<(String, bool)> {
    let mut out: Vec<(String, bool)> = wrap(&crash.label, CRASH_WIDTH)
        .into_iter()
        .map(|l| (l, true))
        .collect();
    let steps: Vec<&Line> = trace
        .lines
        .iter()
        .filter(|l| l.from == Lane::Guest && l.to == Lane::Guest)
        .filter(|l| !matches!(l.mark, Mark::Crash | Mark::Choice | Mark::Serviced))
        .collect();
    let last = &steps[steps.len().saturating_sub(LAST_STEPS)..];
    if !last.is_empty() {
        out.push(("the guest's last steps before it:".to_owned(), false));
        for l in last {
            for (i, text) in wrap(&format!("#{} {}", l.step, l.label), CRASH_WIDTH - 2)
                .into_iter()
                .enumerate()
            {
                let indent = if i == 0 { "  " } else { "      " };
                out.push((format!("{indent}{text}"), false));
            }
        }
    }
    out
}

/// The chart of `trace`, titled `title`. `relay` says whether the relay lane is drawn.
pub fn svg(title: &str, trace: &Trace, relay: bool) -> String {
    let lines: Vec<&Line> = trace.lines.iter().filter(|l| charted(l)).collect();
    let crash = lines
        .iter()
        .find(|l| l.mark == Mark::Crash)
        .map(|l| crash_block(trace, l))
        .unwrap_or_default();
    let height = TOP + ROW * (lines.len() as f64 + 3.0) + 16.0 * crash.len() as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="monospace" font-size="12">"#
    );
    let _ = writeln!(
        s,
        r##"<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="context-stroke"/></marker></defs>"##
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    // The title on up to two lines: what ran, then how it ended.
    let (head, tail) = title.split_once(": ").unwrap_or((title, ""));
    let _ = writeln!(
        s,
        r#"<text x="20" y="22" font-size="15" font-weight="bold">{}</text>"#,
        escape(head)
    );
    if let Some(first) = wrap(tail, 135).first() {
        // The outcome's first line; the crash's whole text is under the crash.
        let more = if first.len() < tail.len() { " …" } else { "" };
        let _ = writeln!(
            s,
            r#"<text x="20" y="40" font-size="12">{}{more}</text>"#,
            escape(first)
        );
    }
    // The relay's marks only where there is a relay.
    let legend: &[(Mark, &str)] = if relay {
        &[
            (Mark::Held, "held"),
            (Mark::Coalesced, "coalesced"),
            (Mark::Local, "answered locally"),
            (Mark::Crash, "crash"),
        ]
    } else {
        &[(Mark::Crash, "crash")]
    };
    for (i, (mark, name)) in legend.iter().enumerate() {
        let x = 20.0 + 170.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="50" width="12" height="12" fill="{}"/><text x="{}" y="60">{name}</text>"#,
            colour(*mark),
            x + 18.0
        );
    }
    let lanes: &[(Lane, &str)] = if relay {
        &[
            (Lane::Host, "host (host_sim)"),
            (Lane::Relay, "relay"),
            (Lane::Guest, "guest"),
        ]
    } else {
        &[(Lane::Host, "host (host_sim)"), (Lane::Guest, "guest")]
    };
    for (lane, name) in lanes {
        let x = lane_x(*lane);
        let _ = writeln!(
            s,
            r##"<text x="{x}" y="{}" text-anchor="middle" font-weight="bold">{name}</text><line x1="{x}" y1="{}" x2="{x}" y2="{height}" stroke="#999" stroke-dasharray="4 3"/>"##,
            TOP - 14.0,
            TOP - 8.0
        );
    }
    let mut extra = 0.0;
    for (i, line) in lines.iter().enumerate() {
        let y = TOP + ROW * (i as f64 + 1.0) + extra;
        let c = colour(line.mark);
        let time = format!("{:.3} ms", line.at.as_secs_f64() * 1000.0);
        let _ = writeln!(
            s,
            r##"<text x="8" y="{y}" fill="#777" font-size="10">{time}</text>"##
        );
        let (x1, x2) = (lane_x(line.from), lane_x(line.to));
        if line.mark == Mark::Crash {
            // The crash: a dot on the guest lane, then its whole text wrapped across the
            // chart, and the guest's last steps before it.
            let _ = writeln!(
                s,
                r#"<circle cx="{x1}" cy="{}" r="6" fill="{c}"/>"#,
                y - 4.0
            );
            for (j, (text, bold)) in crash.iter().enumerate() {
                let (fill, weight) = if *bold {
                    (c, "bold")
                } else {
                    ("#333333", "normal")
                };
                let _ = writeln!(
                    s,
                    r#"<text x="60" y="{}" fill="{fill}" font-weight="{weight}" xml:space="preserve">{}</text>"#,
                    y + 16.0 * (j as f64 + 1.0),
                    escape(text)
                );
            }
            extra += 16.0 * crash.len() as f64;
        } else if line.from == line.to {
            // A note on one lane.
            let anchor = if line.from == Lane::Guest {
                "end"
            } else {
                "start"
            };
            let x = if line.from == Lane::Guest {
                x1 - 6.0
            } else {
                x1 + 6.0
            };
            let weight = if line.mark == Mark::Crash {
                "bold"
            } else {
                "normal"
            };
            let _ = writeln!(
                s,
                r#"<circle cx="{x1}" cy="{}" r="4" fill="{c}"/><text x="{x}" y="{y}" fill="{c}" text-anchor="{anchor}" font-weight="{weight}">{}</text>"#,
                y - 4.0,
                escape(&line.label)
            );
        } else {
            let _ = writeln!(
                s,
                r#"<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{c}" stroke-width="1.5" marker-end="url(#arrow)"/><text x="{}" y="{}" fill="{c}" text-anchor="middle">{}</text>"#,
                (x1 + x2) / 2.0,
                y - 4.0,
                escape(&line.label)
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The chart is one SVG document with an arrow per message and the crash in red, and
    /// text is escaped.
    #[test]
    fn chart_has_arrows_and_marks() {
        let mut t = Trace::default();
        t.push(
            Duration::ZERO,
            Lane::Host,
            Lane::Relay,
            "EJECT(01.0)".into(),
            Mark::None,
        );
        t.push(
            Duration::ZERO,
            Lane::Relay,
            Lane::Relay,
            "held <not settled>".into(),
            Mark::Held,
        );
        t.push(
            Duration::from_millis(1),
            Lane::Guest,
            Lane::Guest,
            "panic".into(),
            Mark::Crash,
        );
        let svg = svg("c2 & co", &t, true);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("marker-end").count(), 1);
        assert!(svg.contains("held &lt;not settled&gt;"));
        assert!(svg.contains("c2 &amp; co"));
        assert!(svg.contains(colour(Mark::Crash)));
    }
}
