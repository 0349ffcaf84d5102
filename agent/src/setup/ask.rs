//! Asking IT staff at the terminal: one question at a time, re-asked until the answer makes
//! sense, and never asked at all when a flag already answers it. With `--yes` nothing is
//! asked: a missing answer is an error naming the flag that gives it.

use std::io::Write;

use anyhow::{bail, Context};
use telework_agent::password;
use zeroize::Zeroizing;

/// Asks questions, or refuses to when the set-up must not ask (`--yes`).
pub struct Ask {
    interactive: bool,
}

impl Ask {
    /// Asks questions when `interactive`, else takes flags and defaults only.
    pub fn new(interactive: bool) -> Self {
        Self { interactive }
    }

    /// Whether questions may be asked.
    pub fn interactive(&self) -> bool {
        self.interactive
    }

    /// The flag's value when given; else the answer to `question` (re-asked until `parse`
    /// takes it, an empty answer meaning `default`); with `--yes`, `default` or an error
    /// naming `flag`.
    pub fn value<T>(
        &self,
        given: Option<T>,
        flag: &str,
        question: &str,
        default: Option<&str>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> anyhow::Result<T> {
        if let Some(value) = given {
            return Ok(value);
        }
        if !self.interactive {
            let Some(default) = default else {
                bail!(
                    "missing {flag}: with --yes nothing is asked, so give it on the command line"
                );
            };
            return parse(default).map_err(|e| anyhow::anyhow!("{flag}: {e}"));
        }
        self.again(question, default, parse)
    }

    /// Asks `question` (again), until `parse` takes the answer.
    pub fn again<T>(
        &self,
        question: &str,
        default: Option<&str>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> anyhow::Result<T> {
        let prompt = match default {
            Some(d) if !d.is_empty() => format!("{question} [{d}]: "),
            _ => format!("{question}: "),
        };
        loop {
            let answer = self.line(&prompt)?;
            let answer = match (answer.trim(), default) {
                ("", Some(d)) => d.to_owned(),
                (a, _) => a.to_owned(),
            };
            match parse(&answer) {
                Ok(value) => return Ok(value),
                Err(why) => println!("{why}. Please try again."),
            }
        }
    }

    /// Yes or no: the flag when given, else asked (Enter takes `default`), else `default`.
    pub fn yes_no(
        &self,
        given: Option<bool>,
        question: &str,
        default: bool,
    ) -> anyhow::Result<bool> {
        if let Some(value) = given {
            return Ok(value);
        }
        if !self.interactive {
            return Ok(default);
        }
        let hint = if default { "[Y/n]" } else { "[y/N]" };
        loop {
            match self
                .line(&format!("{question} {hint} "))?
                .trim()
                .to_lowercase()
                .as_str()
            {
                "" => return Ok(default),
                "y" | "yes" => return Ok(true),
                "n" | "no" => return Ok(false),
                _ => println!("Please answer y or n."),
            }
        }
    }

    /// A new connection password, typed twice without echo; asked again when the two differ
    /// or it is too short.
    pub fn new_password(&self) -> anyhow::Result<Zeroizing<String>> {
        if !self.interactive {
            bail!(
                "missing --password-stdin: with --yes the connection password is read from \
                 standard input"
            );
        }
        loop {
            let first = Zeroizing::new(
                rpassword::prompt_password(format!(
                    "Connection password for employees (at least {} characters, not shown): ",
                    password::MIN_PASSWORD_LEN
                ))
                .context("reading the password from the terminal")?,
            );
            if let Err(e) = password::check(&first) {
                println!("{e}. Please try again.");
                continue;
            }
            let again = Zeroizing::new(
                rpassword::prompt_password("Type the same password again: ")
                    .context("reading the password from the terminal")?,
            );
            if *first != *again {
                println!("The two passwords differ. Please type it twice again.");
                continue;
            }
            return Ok(first);
        }
    }

    /// One line typed at the terminal (or read from standard input), after `prompt`.
    pub fn line(&self, prompt: &str) -> anyhow::Result<String> {
        print!("{prompt}");
        std::io::stdout()
            .flush()
            .context("writing to the terminal")?;
        let mut line = String::new();
        let read = std::io::stdin()
            .read_line(&mut line)
            .context("reading an answer from standard input")?;
        if read == 0 {
            bail!("standard input ended before the set-up was finished; nothing more was done");
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_owned())
    }
}
