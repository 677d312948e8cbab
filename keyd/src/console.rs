//! Reading secrets from an officer: passwords and key components.
//!
//! On a terminal, echo is switched off while the secret is typed (and back on afterwards, also
//! on an error), so it never shows on the screen or in a scroll-back. When standard input is
//! not a terminal (automation, tests), each secret is one line of it. Prompts go to standard
//! error; the secret goes only into a zeroizing buffer sized up front, so reading it leaves no
//! reallocated copies behind.

use std::io::{IsTerminal, Write};

use nix::sys::termios::{LocalFlags, SetArg, Termios, tcgetattr, tcsetattr};
use zeroize::Zeroizing;

/// Longest line accepted as a secret.
const MAX_LINE: usize = 512;

/// Puts the terminal's settings back when dropped.
struct EchoOff {
    saved: Termios,
}

impl EchoOff {
    fn new() -> std::io::Result<Self> {
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        // The newline still shows, so the next prompt starts on its own line.
        quiet.local_flags.insert(LocalFlags::ECHONL);
        tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet)?;
        Ok(Self { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSAFLUSH, &self.saved);
    }
}

/// Whether secrets are typed at a terminal.
pub fn is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// Shows `prompt` and reads one secret line without echo (or one line of a non-terminal
/// standard input). The line ending is removed; surrounding spaces are kept for passwords and
/// trimmed by the callers that parse hex.
///
/// # Errors
/// End of input, a line longer than 512 bytes, or a terminal that cannot be switched.
pub fn read_secret(prompt: &str) -> std::io::Result<Zeroizing<String>> {
    // Echo goes off before the prompt shows, so nothing typed after the prompt can echo (and
    // the flush of pending input cannot eat it).
    let _echo = if is_terminal() {
        Some(EchoOff::new()?)
    } else {
        None
    };
    eprint!("{prompt}: ");
    let _ = std::io::stderr().flush();
    let line = read_line().map_err(|e| std::io::Error::new(e.kind(), format!("{prompt}: {e}")))?;
    String::from_utf8(line.to_vec())
        .map(Zeroizing::new)
        .map_err(|e| {
            let mut bytes = e.into_bytes();
            zeroize::Zeroize::zeroize(&mut bytes);
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{prompt}: not UTF-8"),
            )
        })
}

/// One line of file descriptor 0, read a byte at a time with no buffer in between: std's
/// stdin buffer would keep every secret typed or piped until the process ends, and would
/// read ahead into the next one.
fn read_line() -> std::io::Result<Zeroizing<Vec<u8>>> {
    let mut line = Zeroizing::new(Vec::with_capacity(MAX_LINE));
    let mut byte = Zeroizing::new([0u8; 1]);
    loop {
        let n = match nix::unistd::read(std::io::stdin(), &mut byte[..]) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let [b] = *byte;
        match (n, b) {
            (0, _) if line.is_empty() => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "no input",
                ));
            }
            (0, _) | (_, b'\n') => break,
            (_, b'\r') => {}
            (_, b) if line.len() < MAX_LINE => line.push(b),
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("longer than {MAX_LINE} bytes"),
                ));
            }
        }
    }
    Ok(line)
}
