//! Refreshing a view every interval, for `dbfleet top` and `dbfleet status
//! --watch`. On a terminal the frame is redrawn in place on the alternate
//! screen (cursor hidden, `q` or Ctrl-C quits, the terminal is restored
//! however the view ends); anywhere else every frame is printed in full,
//! without escape codes, so pipes, logs and tests read plain text.

use std::io::{IsTerminal, Write};
use std::time::{Duration, SystemTime};

use crossterm::cursor::{Hide, MoveTo, MoveToNextLine, Show};
use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::style::Print;
use crossterm::terminal::{self, Clear, ClearType, EnterAlternateScreen, LeaveAlternateScreen};
use crossterm::{execute, queue};
use futures::StreamExt;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// How often to refresh and when to stop.
#[derive(Debug, Clone, Copy)]
pub struct Refresh {
    /// Time between the starts of two refreshes.
    pub interval: Duration,
    /// Stop after this many frames; `None` runs until interrupted.
    pub iterations: Option<u64>,
}

/// Where frames go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A terminal: redraw in place.
    Screen,
    /// Not a terminal: every frame in full, each after a blank line and
    /// a `# TITLE at TIME` header.
    Frames,
    /// `--output json`: one JSON document per line, nothing else, even on
    /// a terminal (it is for programs).
    JsonLines,
}

impl Display {
    /// The display for this process's stdout.
    pub fn choose(json: bool) -> Display {
        if json {
            Display::JsonLines
        } else if std::io::stdout().is_terminal() {
            Display::Screen
        } else {
            Display::Frames
        }
    }
}

/// Parses `--interval` (humantime: `2s`, `500ms`, `1m`); zero would
/// refresh in a busy loop, so it is refused.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); use e.g. 2s or 500ms"))?;
    if d.is_zero() {
        return Err("the interval must be longer than 0; use e.g. 2s or 500ms".into());
    }
    Ok(d)
}

/// Shows `next()`'s frame every interval until the iterations are done,
/// `q`/Ctrl-C is pressed or SIGINT/SIGTERM arrives (both a normal end).
///
/// The first refresh failing ends the view with its error (nothing to
/// show: a wrong config, no coordinator); a later failure is shown in
/// place of the frame and retried at the next refresh, so a coordinator
/// takeover does not end it. When the last of `iterations` frames failed
/// its error is returned, so the exit code tells a script.
pub async fn run(
    title: &str,
    refresh: Refresh,
    display: Display,
    mut next: impl AsyncFnMut() -> anyhow::Result<String>,
) -> anyhow::Result<()> {
    let mut stop = Stop::new(display == Display::Screen)?;
    // Dropped on every way out of here, panics included.
    let screen = match display {
        Display::Screen => Some(Screen::enter()?),
        _ => None,
    };
    let every = humantime::format_duration(refresh.interval);
    let mut tick = tokio::time::interval(refresh.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shown = 0u64;
    loop {
        let got = tokio::select! {
            _ = stop.requested() => return Ok(()),
            got = async {
                tick.tick().await;
                next().await
            } => got,
        };
        shown += 1;
        let at = humantime::format_rfc3339_seconds(SystemTime::now());
        let last = match got {
            Ok(body) => {
                match &screen {
                    Some(s) => {
                        s.draw(&format!("{title} at {at}, every {every}; q quits"), &body)?
                    }
                    None => print_frame(display, shown, &format!("# {title} at {at}"), &body)?,
                }
                Ok(())
            }
            Err(e) if shown == 1 => return Err(e),
            Err(e) => {
                let message = format!("dbfleet: {e:#} (trying again every {every})");
                match &screen {
                    Some(s) => s.draw(&format!("{title} at {at}"), &message)?,
                    None => eprintln!("{message}"),
                }
                Err(e)
            }
        };
        if refresh.iterations == Some(shown) {
            return last;
        }
    }
}

/// A frame on a pipe: JSON alone; text after a blank line (but the first)
/// and its header.
fn print_frame(display: Display, n: u64, header: &str, body: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if display == Display::Frames {
        if n > 1 {
            writeln!(out)?;
        }
        writeln!(out, "{header}")?;
    }
    writeln!(out, "{}", body.trim_end_matches('\n'))?;
    out.flush()
}

/// The terminal while the view owns it: raw mode (keys arrive one by
/// one, Ctrl-C as a key), the alternate screen, the cursor hidden.
/// Dropping it gives the terminal back as it was.
struct Screen;

impl Screen {
    fn enter() -> anyhow::Result<Screen> {
        let hint = "pipe the output (e.g. `| cat`) for plain frames";
        terminal::enable_raw_mode()
            .map_err(|e| anyhow::anyhow!("cannot take over the terminal: {e}; {hint}"))?;
        // From here on Drop restores whatever was changed.
        let s = Screen;
        execute!(std::io::stdout(), EnterAlternateScreen, Hide)
            .map_err(|e| anyhow::anyhow!("cannot draw on the terminal: {e}; {hint}"))?;
        Ok(s)
    }

    /// Redraws from the top left, each line cut to the width (so nothing
    /// wraps) and clearing what the previous frame left, without a full
    /// clear that would flicker.
    fn draw(&self, header: &str, body: &str) -> std::io::Result<()> {
        // A terminal that does not know its size (0×0) gets every line
        // whole. Else one column spare: writing the last column leaves a
        // pending wrap that the next clear would eat the character of.
        let (width, height) = match terminal::size() {
            Ok((w, h)) if w > 1 && h > 0 => (usize::from(w - 1), usize::from(h)),
            _ => (usize::MAX, usize::MAX),
        };
        let mut out = std::io::stdout().lock();
        queue!(out, MoveTo(0, 0))?;
        let lines = std::iter::once(header).chain(body.lines());
        for (i, line) in lines.take(height).enumerate() {
            if i > 0 {
                queue!(out, MoveToNextLine(1))?;
            }
            let cut: String = line.chars().take(width).collect();
            queue!(out, Print(cut), Clear(ClearType::UntilNewLine))?;
        }
        queue!(out, Clear(ClearType::FromCursorDown))?;
        out.flush()
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = execute!(std::io::stdout(), Show, LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }
}

/// What ends a view early: SIGINT, SIGTERM, and on a terminal `q` or
/// Ctrl-C (which raw mode delivers as a key, not a signal).
struct Stop {
    int: Signal,
    term: Signal,
    keys: Option<EventStream>,
}

impl Stop {
    fn new(keys: bool) -> anyhow::Result<Stop> {
        Ok(Stop {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
            keys: keys.then(EventStream::new),
        })
    }

    /// Returns once a stop was asked for (cancel-safe: it is raced
    /// against every refresh).
    async fn requested(&mut self) {
        let Stop { int, term, keys } = self;
        loop {
            let key = async {
                match keys {
                    Some(k) => k.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = int.recv() => return,
                _ = term.recv() => return,
                ev = key => match ev {
                    Some(Ok(Event::Key(k))) if is_quit(k) => return,
                    Some(Ok(_)) => {}
                    // The terminal is gone: nobody is watching.
                    None | Some(Err(_)) => return,
                },
            }
        }
    }
}

fn is_quit(k: KeyEvent) -> bool {
    k.kind == KeyEventKind::Press
        && match k.code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => true,
            KeyCode::Char('c' | 'd') => k.modifiers.contains(KeyModifiers::CONTROL),
            _ => false,
        }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_and_zero_is_refused() {
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_interval("0s").unwrap_err().contains("longer than 0"));
        assert!(parse_interval("soon").unwrap_err().contains("e.g. 2s"));
    }

    #[test]
    fn q_and_ctrl_c_quit_other_keys_do_not() {
        let key = |c, m| KeyEvent::new(c, m);
        assert!(is_quit(key(KeyCode::Char('q'), KeyModifiers::NONE)));
        assert!(is_quit(key(KeyCode::Char('c'), KeyModifiers::CONTROL)));
        assert!(!is_quit(key(KeyCode::Char('c'), KeyModifiers::NONE)));
        assert!(!is_quit(key(KeyCode::Char('x'), KeyModifiers::NONE)));
    }

    #[tokio::test]
    async fn frames_stop_after_the_iterations_and_a_later_failure_is_the_exit() {
        let refresh = Refresh {
            interval: Duration::from_millis(1),
            iterations: Some(3),
        };
        let mut calls = 0;
        let r = run("t", refresh, Display::JsonLines, async || {
            calls += 1;
            if calls == 3 {
                anyhow::bail!("gone")
            }
            Ok("{}".to_string())
        })
        .await;
        assert_eq!(r.unwrap_err().to_string(), "gone");
        assert_eq!(calls, 3);

        let mut calls = 0;
        let r = run("t", refresh, Display::JsonLines, async || {
            calls += 1;
            anyhow::bail!("no coordinator")
        })
        .await;
        assert!(r.is_err());
        assert_eq!(calls, 1, "the first failure ends the view");
    }
}
