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

/// One cell: `failures/schedules`, the first failing seed and its kind, and `!` when the
/// scenario's expectation is not met.
pub fn cell(scenario: &Scenario, guest: GuestKind, summary: &Summary) -> String {
    let mut text = format!("{}/{}", summary.failures, summary.schedules);
    if let Some(seed) = summary.first_failing_seed {
        let kind = summary
            .outcomes
            .iter()
            .filter(|(k, _)| k.as_str() != "ok")
            .max_by_key(|(_, n)| **n)
            .map(|(k, _)| k.as_str())
            .unwrap_or("?");
        text.push_str(&format!(" {kind} (seed {seed})"));
    }
    if check(scenario, guest, summary).is_err() {
        text.push_str(" !");
    }
    text
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
