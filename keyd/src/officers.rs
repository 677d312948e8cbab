//! Security officers: accounts, logins with lockout, and dual control.
//!
//! A credential is stored as `HMAC-SHA-256(pepper, PBKDF2-HMAC-SHA-256(password, salt, n))`.
//! The pepper is derived from the LMK inside the token, so a copy of the key store alone is no
//! help in guessing passwords offline: every guess needs the token.
//!
//! Dual control is a pair of approvals. An officer approves one action on one subject (form the
//! ZMK of zone `z1`, destroy key `tmk-…`, export under zone `z2`'s ZMK, enrol officer `carol`);
//! the action runs only when two distinct officers' approvals, each younger than the window,
//! are there, and running it uses them up. The approvals live in the key store, so the two
//! officers may approve from different terminals, and an operation arriving over the socket
//! (an export requested by a script) is held to the same rule.

use std::sync::Arc;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::hsm::Hsm;
use crate::store::{Approval, KeyStore, LoginGate, OfficerRecord};
use crate::{Error, crypto};

/// Whether ceremonies need two officers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum DualControl {
    /// Two distinct officers approve every controlled action (the default).
    #[default]
    #[serde(rename = "on")]
    On,
    /// No approvals needed: for automated test environments only. keyd says so loudly on
    /// every start and in the audit log.
    #[serde(rename = "off-for-tests")]
    OffForTests,
}

/// The rules officers work under (the `[officers]` section of the config).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Dual control on (default) or off for automated tests.
    #[serde(default)]
    pub dual_control: DualControl,
    /// How long an approval stays valid.
    #[serde(default = "default_window")]
    pub approval_window_secs: u64,
    /// Failed logins in a row that lock an account.
    #[serde(default = "default_max_failures")]
    pub max_failed_logins: u32,
    /// How long a locked account stays locked.
    #[serde(default = "default_lockout")]
    pub lockout_secs: u64,
    /// PBKDF2 iterations for new credentials (existing ones keep theirs).
    #[serde(default = "default_iterations")]
    pub kdf_iterations: u32,
    /// How long a destroyed key can still be restored before its block is erased.
    #[serde(default = "default_restore")]
    pub restore_window_secs: u64,
    /// How long a replaced LMK stays in the tokens after a rotation (so a store backup from
    /// before it can still be opened) before keyd destroys it.
    #[serde(default = "default_lmk_restore")]
    pub lmk_restore_window_secs: u64,
}

const fn default_window() -> u64 {
    300
}
const fn default_max_failures() -> u32 {
    5
}
const fn default_lockout() -> u64 {
    900
}
const fn default_iterations() -> u32 {
    600_000
}
const fn default_restore() -> u64 {
    7 * 24 * 3600
}
const fn default_lmk_restore() -> u64 {
    30 * 24 * 3600
}

/// Fewest PBKDF2 iterations accepted in the config.
pub const MIN_ITERATIONS: u32 = 10_000;

impl Default for Policy {
    fn default() -> Self {
        Self {
            dual_control: DualControl::On,
            approval_window_secs: default_window(),
            max_failed_logins: default_max_failures(),
            lockout_secs: default_lockout(),
            kdf_iterations: default_iterations(),
            restore_window_secs: default_restore(),
            lmk_restore_window_secs: default_lmk_restore(),
        }
    }
}

impl Policy {
    /// Checks the numbers.
    ///
    /// # Errors
    /// [`Error::Config`] naming the field.
    pub fn check(&self) -> Result<(), Error> {
        if self.kdf_iterations < MIN_ITERATIONS {
            return Err(Error::Config(format!(
                "officers.kdf_iterations must be at least {MIN_ITERATIONS}"
            )));
        }
        if self.max_failed_logins == 0 || self.approval_window_secs == 0 || self.lockout_secs == 0 {
            return Err(Error::Config(
                "officers.max_failed_logins, approval_window_secs and lockout_secs must be positive"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Dual control off and the cheapest credential hashing: for in-process test services,
    /// fuzz targets and benchmarks, never for a config.
    pub fn for_tests() -> Self {
        Self {
            dual_control: DualControl::OffForTests,
            kdf_iterations: MIN_ITERATIONS,
            ..Self::default()
        }
    }

    /// Whether two officers must approve controlled actions.
    pub fn dual(&self) -> bool {
        self.dual_control == DualControl::On
    }
}

/// What needs two officers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Forming or generating a zone's ZMK (subject: the zone).
    ZmkForm,
    /// Exporting or translating a key under a zone's ZMK from the admin socket (subject: the
    /// destination zone).
    Export,
    /// Destroying a key (subject: the key id).
    Destroy,
    /// Enrolling another officer (subject: the new name).
    OfficerAdd,
    /// Forming a new LMK, in the token of each node (subject: `lmk`).
    LmkRotate,
    /// Destroying a retired LMK before its restore window ends (subject: its KCV).
    LmkDestroy,
    /// Giving a zone a new ZMK (subject: the zone).
    ZmkRotate,
    /// Retiring a zone's old ZMK before every device has moved (subject: the zone).
    ZmkRetire,
}

impl Action {
    /// Its name on the command line and in the store.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ZmkForm => "zmk-form",
            Self::Export => "export",
            Self::Destroy => "destroy",
            Self::OfficerAdd => "officer-add",
            Self::LmkRotate => "lmk-rotate",
            Self::LmkDestroy => "lmk-destroy",
            Self::ZmkRotate => "zmk-rotate",
            Self::ZmkRetire => "zmk-retire",
        }
    }

    /// The action of a name.
    pub fn from_name(name: &str) -> Option<Self> {
        [
            Self::ZmkForm,
            Self::Export,
            Self::Destroy,
            Self::OfficerAdd,
            Self::LmkRotate,
            Self::LmkDestroy,
            Self::ZmkRotate,
            Self::ZmkRetire,
        ]
        .into_iter()
        .find(|a| a.name() == name)
    }
}

/// An officer's password: zeroized on drop, never printed.
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wraps a typed password (the trailing newline already removed).
    pub fn new(text: Zeroizing<String>) -> Self {
        Self(text)
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Officer names: a lower-case letter, then up to 31 of `[a-z0-9._-]`.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

use crate::unix_now as now;

/// Officer accounts and approvals over a key store.
pub struct Officers {
    store: Arc<dyn KeyStore>,
    policy: Policy,
    pepper: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Officers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Officers")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Officers {
    /// Officers of the store, under the policy, with the pepper derived from the token's LMK.
    ///
    /// # Errors
    /// [`Error::Hsm`] if the LMK refuses the derivation.
    pub fn new(store: Arc<dyn KeyStore>, hsm: &dyn Hsm, policy: Policy) -> Result<Self, Error> {
        let pepper = crate::lmk_secret(hsm, &*store, "keyd officer credential pepper")?;
        Ok(Self {
            store,
            policy,
            pepper,
        })
    }

    /// Every officer, by name.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn list(&self) -> Result<Vec<OfficerRecord>, Error> {
        self.store.officers()
    }

    /// Puts another policy in force (the pepper stays: it depends on the LMK only).
    pub fn set_policy(&mut self, policy: Policy) {
        self.policy = policy;
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    fn credential(&self, password: &Password, salt: &[u8], iterations: u32) -> [u8; 32] {
        let stretched = crypto::pbkdf2_sha256(password.bytes(), salt, iterations);
        crypto::hmac(&self.pepper[..], &stretched[..]).unwrap_or([0; 32])
    }

    /// Checks an officer's name.
    ///
    /// # Errors
    /// [`Error::BadRequest`] saying what names look like.
    pub fn check_name(name: &str) -> Result<(), Error> {
        if valid_name(name) {
            Ok(())
        } else {
            Err(Error::BadRequest(
                "officer names are a lower-case letter and up to 31 of [a-z0-9._-]".into(),
            ))
        }
    }

    /// Checks a new officer's name and password without enrolling anyone, so a ceremony can
    /// refuse bad input before it changes anything.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a bad name or a weak password.
    pub fn check_new(name: &str, password: &Password) -> Result<(), Error> {
        Self::check_name(name)?;
        let chars = password.0.chars().count();
        if !(12..=128).contains(&chars) {
            return Err(Error::BadRequest(
                "an officer's password is 12 to 128 characters".into(),
            ));
        }
        // Compared in place: a lower-cased copy would be an unzeroized copy of the password.
        if password
            .bytes()
            .windows(name.len())
            .any(|w| w.eq_ignore_ascii_case(name.as_bytes()))
        {
            return Err(Error::BadRequest(
                "an officer's password must not contain the officer's name".into(),
            ));
        }
        Ok(())
    }

    /// Enrols an officer.
    ///
    /// # Errors
    /// [`Error::BadRequest`] for a bad name or a weak password; [`Error::Conflict`] for a
    /// taken name; [`Error::Store`], [`Error::Hsm`].
    pub fn enrol(&self, hsm: &dyn Hsm, name: &str, password: &Password) -> Result<(), Error> {
        Self::check_new(name, password)?;
        let mut salt = [0u8; 16];
        hsm.random(&mut salt)?;
        let iterations = self.policy.kdf_iterations;
        self.store.insert_officer(&OfficerRecord {
            name: name.to_owned(),
            salt,
            iterations,
            hash: self.credential(password, &salt, iterations),
            failures: 0,
            locked_until: None,
            created_at: now(),
            last_login: None,
        })
    }

    /// Replaces an officer's password after checking the current one (a fresh salt, and the
    /// policy's iteration count).
    ///
    /// # Errors
    /// As [`Officers::authenticate`] for the current password; [`Error::BadRequest`] for a weak
    /// new one; [`Error::Store`], [`Error::Hsm`].
    pub fn change_password(
        &self,
        hsm: &dyn Hsm,
        name: &str,
        current: &Password,
        new: &Password,
    ) -> Result<(), Error> {
        Self::check_new(name, new)?;
        self.authenticate(name, current)?;
        let mut salt = [0u8; 16];
        hsm.random(&mut salt)?;
        let iterations = self.policy.kdf_iterations;
        let hash = self.credential(new, &salt, iterations);
        self.store.set_credential(name, salt, iterations, hash)
    }

    /// Checks an officer's password. A locked account is refused without looking at the
    /// password; an unknown name costs the same work as a wrong password and reads the same.
    ///
    /// # Errors
    /// [`Error::Auth`] for an unknown name or a wrong password; [`Error::Locked`] for a locked
    /// account (also when this failure locked it); [`Error::Store`].
    pub fn authenticate(&self, name: &str, password: &Password) -> Result<(), Error> {
        let now = now();
        let max = self.policy.max_failed_logins;
        let until = now.saturating_add(self.policy.lockout_secs);
        match self.store.begin_login(name, max, until, now)? {
            LoginGate::Unknown => {
                let _ = self.credential(password, &[0; 16], self.policy.kdf_iterations);
                return Err(Error::Auth);
            }
            LoginGate::Locked(until) => return Err(Error::Locked(until)),
            LoginGate::Allowed => {}
        }
        let officer = self.store.officer(name)?.ok_or(Error::Auth)?;
        let hash = self.credential(password, &officer.salt, officer.iterations);
        let ok = bool::from(hash.ct_eq(&officer.hash));
        if let Some(until) = self.store.finish_login(name, ok, max, until, now)? {
            tracing::warn!(officer = name, "officer account locked after failed logins");
            return Err(Error::Locked(until));
        }
        if ok { Ok(()) } else { Err(Error::Auth) }
    }

    /// Records an authenticated officer's approval of `action` on `subject`.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn approve(&self, officer: &str, action: Action, subject: &str) -> Result<(), Error> {
        self.store.add_approval(&Approval {
            action: action.name().to_owned(),
            subject: subject.to_owned(),
            officer: officer.to_owned(),
            at: now(),
        })
    }

    /// The distinct officers whose approvals of `action` on `subject` are waiting, without
    /// using them up.
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn approved_so_far(&self, action: Action, subject: &str) -> Result<Vec<String>, Error> {
        let not_before = now().saturating_sub(self.policy.approval_window_secs);
        self.store
            .take_approvals(action.name(), subject, not_before, usize::MAX)
    }

    /// Lets `action` on `subject` run if two distinct officers approved it within the window,
    /// using their approvals up; returns who approved. Without dual control (test
    /// environments) it lets everything run and returns no one.
    ///
    /// # Errors
    /// [`Error::DualControl`] saying who has approved so far; [`Error::Store`].
    pub fn require(&self, action: Action, subject: &str) -> Result<Vec<String>, Error> {
        if !self.policy.dual() {
            tracing::warn!(
                action = action.name(),
                subject,
                "DUAL CONTROL IS OFF (officers.dual_control = \"off-for-tests\"): allowed without approvals"
            );
            return Ok(Vec::new());
        }
        let window = self.policy.approval_window_secs;
        let officers =
            self.store
                .take_approvals(action.name(), subject, now().saturating_sub(window), 2)?;
        if officers.len() >= 2 {
            return Ok(officers);
        }
        Err(Error::DualControl(format!(
            "{} {subject} needs approvals from two distinct officers within {window} s; approved so far by: {}",
            action.name(),
            if officers.is_empty() {
                "no one".to_owned()
            } else {
                officers.join(", ")
            }
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MemoryStore, SoftwareHsm};

    fn password(s: &str) -> Password {
        Password::new(Zeroizing::new(s.to_owned()))
    }

    fn officers(policy: Policy) -> (Officers, SoftwareHsm) {
        let hsm = SoftwareHsm::new();
        hsm.create_lmk().unwrap();
        let o = Officers::new(Arc::new(MemoryStore::new()), &hsm, policy).unwrap();
        (o, hsm)
    }

    fn fast() -> Policy {
        Policy {
            kdf_iterations: MIN_ITERATIONS,
            max_failed_logins: 3,
            ..Policy::default()
        }
    }

    #[test]
    fn enrolment_checks_names_and_passwords() {
        let (o, hsm) = officers(fast());
        for (name, pw, why) in [
            ("Alice", "a long passphrase", "names"),
            ("9lives", "a long passphrase", "names"),
            ("alice", "short", "12 to 128"),
            ("alice", "alice-is-my-name", "officer's name"),
        ] {
            let err = o.enrol(&hsm, name, &password(pw)).unwrap_err().to_string();
            assert!(err.contains(why), "{name}: {err}");
        }
        o.enrol(&hsm, "alice", &password("correct horse battery"))
            .unwrap();
        assert!(matches!(
            o.enrol(&hsm, "alice", &password("another passphrase")),
            Err(Error::Conflict(_))
        ));
        let stored = o.store.officer("alice").unwrap().unwrap();
        assert_eq!(stored.iterations, MIN_ITERATIONS);
        assert_ne!(
            stored.hash,
            <[u8; 32]>::try_from(
                &crypto::pbkdf2_sha256(b"correct horse battery", &stored.salt, MIN_ITERATIONS)[..]
            )
            .unwrap(),
            "the stored hash is peppered"
        );
    }

    #[test]
    fn logins_lock_after_repeated_failures() {
        let (o, hsm) = officers(fast());
        o.enrol(&hsm, "alice", &password("correct horse battery"))
            .unwrap();
        o.authenticate("alice", &password("correct horse battery"))
            .unwrap();
        assert!(matches!(
            o.authenticate("mallory", &password("correct horse battery")),
            Err(Error::Auth)
        ));
        assert!(matches!(
            o.authenticate("alice", &password("wrong")),
            Err(Error::Auth)
        ));
        assert!(matches!(
            o.authenticate("alice", &password("wrong")),
            Err(Error::Auth)
        ));
        assert!(matches!(
            o.authenticate("alice", &password("wrong")),
            Err(Error::Locked(_))
        ));
        assert!(
            matches!(
                o.authenticate("alice", &password("correct horse battery")),
                Err(Error::Locked(_))
            ),
            "the right password does not open a locked account"
        );
    }

    #[test]
    fn an_officer_changes_their_password() {
        let (o, hsm) = officers(fast());
        o.enrol(&hsm, "alice", &password("correct horse battery"))
            .unwrap();
        assert!(matches!(
            o.change_password(
                &hsm,
                "alice",
                &password("wrong"),
                &password("a brand new phrase")
            ),
            Err(Error::Auth)
        ));
        assert!(
            o.change_password(
                &hsm,
                "alice",
                &password("correct horse battery"),
                &password("short")
            )
            .is_err()
        );
        o.change_password(
            &hsm,
            "alice",
            &password("correct horse battery"),
            &password("a brand new phrase"),
        )
        .unwrap();
        assert!(
            o.authenticate("alice", &password("correct horse battery"))
                .is_err()
        );
        o.authenticate("alice", &password("a brand new phrase"))
            .unwrap();
    }

    #[test]
    fn dual_control_needs_two_distinct_officers() {
        let (o, _) = officers(fast());
        let err = o.require(Action::Destroy, "tmk-1").unwrap_err().to_string();
        assert!(err.contains("no one"), "{err}");
        o.approve("alice", Action::Destroy, "tmk-1").unwrap();
        o.approve("alice", Action::Destroy, "tmk-1").unwrap();
        o.approve("bob", Action::Destroy, "tmk-2").unwrap();
        o.approve("bob", Action::ZmkForm, "tmk-1").unwrap();
        let err = o.require(Action::Destroy, "tmk-1").unwrap_err().to_string();
        assert!(err.contains("approved so far by: alice"), "{err}");
        o.approve("bob", Action::Destroy, "tmk-1").unwrap();
        assert_eq!(
            o.require(Action::Destroy, "tmk-1").unwrap(),
            ["alice", "bob"]
        );
        assert!(
            o.require(Action::Destroy, "tmk-1").is_err(),
            "one pair of approvals allows one action"
        );
        let (off, _) = officers(Policy {
            dual_control: DualControl::OffForTests,
            ..fast()
        });
        assert!(off.require(Action::Destroy, "tmk-1").unwrap().is_empty());
    }
}
