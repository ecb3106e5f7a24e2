//! Reports for people and scripts: the demo's table, one line per run set, JSON objects.

use crate::explore::{Summary, check};
use crate::scenario::{GuestKind, Scenario};

/// The columns of the demo: each guest model, then each real driver, direct and through the
/// relay.
pub const COLUMNS: [(GuestKind, bool); 10] = [
    (GuestKind::Linux62, false),
    (GuestKind::Linux62, true),
    (GuestKind::Linux63, false),
    (GuestKind::Linux63, true),
    (GuestKind::Debian510, false),
    (GuestKind::Debian510, true),
    (GuestKind::Debian61, false),
    (GuestKind::Debian61, true),
    (GuestKind::Debian612, false),
    (GuestKind::Debian612, true),
];

/// A column's heading.
pub fn column_name(guest: GuestKind, relay: bool) -> String {
    format!(
        "{} {}",
        guest
            .name()
            .trim_start_matches("linux-")
            .trim_start_matches("debian-"),
        if relay { "relay" } else { "direct" }
    )
}

/// A column's heading in the demo's table, short so that a row fits 120 columns
/// (`6.2 dir`, `6.2 relay`).
pub fn short_column_name(guest: GuestKind, relay: bool) -> String {
    format!(
        "{} {}",
        guest_arg(guest),
        if relay { "relay" } else { "dir" }
    )
}

/// The guest as `--guest` takes it (`6.2`, `5.10`).
pub fn guest_arg(guest: GuestKind) -> &'static str {
    guest
        .name()
        .trim_start_matches("linux-")
        .trim_start_matches("debian-")
}

/// One cell, short: `failures/schedules`, or `n/a` when a required script step never fired
/// in any schedule (the runs never reached the scenario's window), and `!` when the
/// scenario's expectation is not met. The failure kinds are in [`cell_detail`].
pub fn cell(scenario: &Scenario, guest: GuestKind, summary: &Summary) -> String {
    let mut text = if summary.never_fired().next().is_some() {
        "n/a".to_owned()
    } else {
        format!("{}/{}", summary.failures, summary.schedules)
    };
    if check(scenario, guest, summary).is_err() {
        text.push_str(" !");
    }
    text
}

/// The failure kinds with their counts and, for each, the first seed that replays to it:
/// `segfault 19 (seed 0), null_deref 1 (seed 7)`; empty if nothing failed.
pub fn kinds_text(summary: &Summary) -> String {
    summary
        .failure_kinds()
        .iter()
        .map(|(kind, n, seed)| match seed {
            Some(seed) => format!("{kind} {n} (seed {seed})"),
            None => format!("{kind} {n}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a cell does not say: the script steps that did not fire (`n/a: step 1 (received
/// CREATE_INTERRUPT_MESSAGE3 for slot 1) never fired`), then the failure kinds; `None` for a
/// cell with nothing more to say.
pub fn cell_detail(summary: &Summary) -> Option<String> {
    let mut parts = Vec::new();
    for u in &summary.unfired_steps {
        let fatal = u.fatal(summary.schedules);
        parts.push(format!(
            "{}{} ({}) {} ({} of {} schedules{})",
            if fatal { "n/a: " } else { "" },
            u.name(),
            u.when,
            if u.missed >= summary.schedules {
                "never fired"
            } else {
                "did not fire"
            },
            u.missed,
            summary.schedules,
            if u.optional { ", optional" } else { "" }
        ));
    }
    let kinds = kinds_text(summary);
    if !kinds.is_empty() {
        parts.push(kinds);
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// A ready-made command that replays the cell's commonest failure (its first seed, or its
/// first systematic schedule: `--systematic N`), or `None` if nothing failed.
pub fn replay_command(scenario: &str, guest: GuestKind, summary: &Summary) -> Option<String> {
    let (kind, _, seed) = summary.failure_kinds().into_iter().next()?;
    let which = match seed {
        Some(seed) => format!("--seed {seed}"),
        None => format!("--systematic {}", summary.first_schedule_by_kind.get(kind)?),
    };
    Some(format!(
        "petri replay {which} {scenario} --guest {}{}",
        guest_arg(guest),
        if summary.relay { " --relay" } else { "" }
    ))
}

/// The name of the `i`-th note of the demo's table: `a`..`z`, `A`..`Z`, then `a1`...
fn note_name(i: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let letter = char::from(LETTERS[i % LETTERS.len()]);
    match i / LETTERS.len() {
        0 => letter.to_string(),
        n => format!("{letter}{n}"),
    }
}

/// The demo's table, one row per scenario and one column per [`COLUMNS`] entry (each row's
/// summaries in that order), and below it one note per cell with something to say (its
/// kinds with counts and seeds, steps that did not fire, and a replay command for its
/// guest), which the cell names by letter: `143/200 a`. Rows fit 120 columns.
pub fn demo_table(results: &[(&Scenario, Vec<Summary>)]) -> String {
    // Two tables, the models' and the real drivers', so that each row fits a 120-column
    // terminal; the notes follow both.
    let mut notes = Vec::new();
    let mut tables = Vec::new();
    for models in [true, false] {
        let columns: Vec<usize> = COLUMNS
            .iter()
            .enumerate()
            .filter(|(_, (g, _))| g.model().is_some() == models)
            .map(|(i, _)| i)
            .collect();
        let mut header = vec!["scenario".to_owned()];
        header.extend(
            columns
                .iter()
                .filter_map(|&i| COLUMNS.get(i).map(|(g, r)| short_column_name(*g, *r))),
        );
        let mut rows = Vec::new();
        for (scenario, summaries) in results {
            let mut row = vec![scenario.name.clone()];
            for &i in &columns {
                let (Some((guest, relay)), Some(summary)) = (COLUMNS.get(i), summaries.get(i))
                else {
                    continue;
                };
                let mut text = cell(scenario, *guest, summary);
                if let Some(detail) = cell_detail(summary) {
                    let name = note_name(notes.len());
                    text = match text.strip_suffix(" !") {
                        Some(t) => format!("{t} {name}!"),
                        None => format!("{text} {name}"),
                    };
                    let mut note = format!(
                        "{name:<3} {} {}: {detail}",
                        scenario.name,
                        column_name(*guest, *relay)
                    );
                    if let Some(cmd) = replay_command(&scenario.name, *guest, summary) {
                        note.push_str(&format!("\n    {cmd}"));
                    }
                    notes.push(note);
                }
                row.push(text);
            }
            rows.push(row);
        }
        tables.push(table(&header, &rows));
    }
    let mut out = tables.join("\n");
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}

/// A plain-text table with a header row.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let columns = header.len();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate().take(columns) {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(c.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, w) in widths.iter().enumerate() {
            let c = cells.get(i).map(String::as_str).unwrap_or("");
            out.push_str(&format!("| {c:<w$} "));
        }
        out.push_str("|\n");
        out
    };
    let mut out = line(header);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    out.push_str(&line(&rule).replace("| -", "|--").replace("- |", "--|"));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Columns line up whatever the cell widths.
    #[test]
    fn table_aligns() {
        let t = table(
            &["a".into(), "bb".into()],
            &[vec!["ccc".into(), "d".into()]],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()));
    }
}
