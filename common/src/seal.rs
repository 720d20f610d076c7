//! Backups sealed at rest. A backup holds all the data and every
//! account's password hash, and a repository (a mounted share, a bucket)
//! is read by more people and programs than the database: with
//! `[backup] seal_key_file` set, every data file the agent stores (backup
//! streams, logical dumps, archived binlog chunks) is encrypted in the
//! [age](https://age-encryption.org/v1) format to the key's recipient,
//! streamed, after compression. Manifests, chunk metas and the tools' logs
//! stay readable, so catalogs and retention work without the key, and the
//! manifest says which recipient a backup was sealed for.
//!
//! age is a published format with independent implementations: a DBA can
//! open a sealed file by hand (`age -d -i KEY FILE | zstd -d`) when dbfleet
//! is not there. Every agent that restores or verifies another host's
//! backups needs the same key file. Reading tells sealed from plain by the
//! age header, so backups taken before sealing was turned on still
//! restore; a sealed file without the key is refused naming the fix.

use std::io::{self, BufReader, Read, Write};
use std::path::Path;
use std::str::FromStr;

use age::secrecy::ExposeSecret;

/// The first bytes of every age file.
const AGE_HEADER: &[u8] = b"age-encryption.org/v1\n";

/// The key backups are sealed with: an age X25519 identity
/// (`AGE-SECRET-KEY-1...`, one line, as `age-keygen` and `dbfleet
/// backup-key generate` write it).
#[derive(Clone)]
pub struct SealKey {
    identity: age::x25519::Identity,
    recipient: age::x25519::Recipient,
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret: only what it seals for.
        write!(f, "SealKey({})", self.recipient)
    }
}

impl SealKey {
    /// Reads the key file: not readable by others (0600 or 0640), one
    /// identity, comments (`#`) allowed. Errors name the file and the fix
    /// and never quote its contents.
    pub fn load(path: &Path) -> Result<SealKey, String> {
        let secret = crate::config::read_secret(path).map_err(|e| e.to_string())?;
        let keys: Vec<&str> = secret
            .expose()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let [line] = keys[..] else {
            return Err(format!(
                "{} must hold exactly one age identity (AGE-SECRET-KEY-1...), it holds {}; write one with `dbfleet backup-key generate --out {}`",
                path.display(),
                keys.len(),
                path.display()
            ));
        };
        let identity = age::x25519::Identity::from_str(line).map_err(|_| {
            format!(
                "{} is not an age identity (AGE-SECRET-KEY-1...); write one with `dbfleet backup-key generate --out {}`",
                path.display(),
                path.display()
            )
        })?;
        let recipient = identity.to_public();
        Ok(SealKey {
            identity,
            recipient,
        })
    }

    /// A new key, as the text of a key file.
    pub fn generate() -> (String, String) {
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public().to_string();
        let text = format!(
            "# dbfleet backup seal key; recipient: {recipient}\n{}\n",
            identity.to_string().expose_secret()
        );
        (text, recipient)
    }

    /// The public recipient (`age1...`) the key seals for.
    pub fn recipient(&self) -> String {
        self.recipient.to_string()
    }

    /// Seals what is written to `out`; [`Sealing::finish`] ends the file.
    pub fn seal<W: Write>(&self, out: W) -> io::Result<Sealing<W>> {
        let recipients: [&dyn age::Recipient; 1] = [&self.recipient];
        let encryptor = age::Encryptor::with_recipients(recipients.into_iter())
            .map_err(|e| io::Error::other(format!("cannot seal: {e}")))?;
        encryptor.wrap_output(out).map(Sealing::Sealed)
    }
}

/// A writer that seals (or, without a key, passes bytes through).
pub enum Sealing<W: Write> {
    /// No key: the bytes as they are.
    Plain(W),
    /// Encrypted to the key's recipient.
    Sealed(age::stream::StreamWriter<W>),
}

impl<W: Write> Sealing<W> {
    /// Seals to `key` when there is one.
    pub fn new(key: Option<&SealKey>, out: W) -> io::Result<Sealing<W>> {
        match key {
            Some(k) => k.seal(out),
            None => Ok(Sealing::Plain(out)),
        }
    }

    /// Writes the last sealed block; returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Sealing::Plain(w) => Ok(w),
            Sealing::Sealed(s) => s.finish(),
        }
    }
}

impl<W: Write> Write for Sealing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sealing::Plain(w) => w.write(buf),
            Sealing::Sealed(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sealing::Plain(w) => w.flush(),
            Sealing::Sealed(s) => s.flush(),
        }
    }
}

/// Opens what `input` holds, sealed or plain (told by the age header).
/// `what` names the file for messages. A sealed file needs `key`; one
/// sealed for another recipient is refused.
pub fn open<'a, R: Read + Send + 'a>(
    key: Option<&SealKey>,
    input: R,
    what: &str,
) -> Result<Box<dyn Read + Send + 'a>, String> {
    // A reader may hand out fewer bytes than the header at first (a
    // bucket's first HTTP chunk): read until the header is whole or the
    // file ends before deciding.
    let mut input = input;
    let mut head = vec![0u8; AGE_HEADER.len()];
    let mut got = 0;
    while got < head.len() {
        match input.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read {what}: {e}")),
        }
    }
    head.truncate(got);
    let sealed = head == AGE_HEADER;
    let input = BufReader::with_capacity(64 << 10, io::Cursor::new(head).chain(input));
    if !sealed {
        return Ok(Box::new(input));
    }
    let Some(key) = key else {
        return Err(format!(
            "{what} is sealed (age-encrypted) and this agent has no key: set [backup] seal_key_file to the fleet's backup key"
        ));
    };
    let decryptor = age::Decryptor::new_buffered(input)
        .map_err(|e| format!("{what} is sealed but its age header is damaged: {e}"))?;
    let identities: [&dyn age::Identity; 1] = [&key.identity];
    let reader = decryptor.decrypt(identities.into_iter()).map_err(|e| {
        format!(
            "{what} is sealed for another key than this agent's ({}): {e}; set [backup] seal_key_file to the key it was sealed with",
            key.recipient
        )
    })?;
    Ok(Box::new(reader))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key_file(dir: &Path, text: &str, mode: u32) -> std::path::PathBuf {
        let path = dir.join("seal.key");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn seal(key: Option<&SealKey>, plain: &[u8]) -> Vec<u8> {
        let mut w = Sealing::new(key, Vec::new()).unwrap();
        w.write_all(plain).unwrap();
        w.finish().unwrap()
    }

    fn read(key: Option<&SealKey>, stored: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        open(key, stored, "the file")?
            .read_to_end(&mut out)
            .map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[test]
    fn a_sealed_file_opens_only_with_its_key_and_plain_files_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let (text, recipient) = SealKey::generate();
        let key = SealKey::load(&key_file(dir.path(), &text, 0o600)).unwrap();
        assert_eq!(key.recipient(), recipient);
        assert!(!format!("{key:?}").contains("SECRET"), "{key:?}");
        let plain: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let sealed = seal(Some(&key), &plain);
        assert!(sealed.starts_with(AGE_HEADER));
        assert!(
            !sealed
                .windows(16)
                .any(|w| plain.windows(16).next() == Some(w)),
            "no plaintext in the sealed file"
        );
        assert_eq!(read(Some(&key), &sealed).unwrap(), plain);
        assert_eq!(read(None, &seal(None, &plain)).unwrap(), plain);
        assert_eq!(read(Some(&key), &seal(None, &plain)).unwrap(), plain);

        // A reader that hands out a byte at a time (a bucket's chunks).
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let Some((first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                buf[0] = *first;
                self.0 = rest;
                Ok(1)
            }
        }
        let mut out = Vec::new();
        open(Some(&key), Trickle(&sealed), "the file")
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
        assert_eq!(
            read(Some(&key), b"age").unwrap(),
            b"age",
            "shorter than a header"
        );

        let e = read(None, &sealed).unwrap_err();
        assert!(e.contains("seal_key_file"), "{e}");
        let (other_text, _) = SealKey::generate();
        let other_dir = tempfile::tempdir().unwrap();
        let other = SealKey::load(&key_file(other_dir.path(), &other_text, 0o600)).unwrap();
        let e = read(Some(&other), &sealed).unwrap_err();
        assert!(e.contains("another key"), "{e}");

        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(read(Some(&key), &damaged).is_err(), "tampering is detected");
        let truncated = &sealed[..sealed.len() - 100];
        assert!(
            read(Some(&key), truncated).is_err(),
            "truncation is detected"
        );
    }

    #[test]
    fn a_bad_key_file_is_refused_naming_the_fix_and_never_quoted() {
        let dir = tempfile::tempdir().unwrap();
        let (text, _) = SealKey::generate();
        let secret = text
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
            .unwrap();
        let e = SealKey::load(&key_file(dir.path(), &text, 0o644)).unwrap_err();
        assert!(!e.contains(secret), "{e}");
        let e =
            SealKey::load(&key_file(dir.path(), "AGE-SECRET-KEY-1NOTAKEY\n", 0o600)).unwrap_err();
        assert!(
            e.contains("not an age identity") && !e.contains("NOTAKEY"),
            "{e}"
        );
        let e = SealKey::load(&key_file(dir.path(), &format!("{text}{text}"), 0o600)).unwrap_err();
        assert!(e.contains("exactly one") && !e.contains(secret), "{e}");
    }
}
