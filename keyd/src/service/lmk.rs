//! LMK rotation: a new LMK formed under dual control, every stored block re-sealed under it in
//! resumable batches while keyd serves, an atomic switch, and the old LMK destroyed when its
//! restore window ends.
//!
//! Every block names the LMK that seals it: blocks under the original LMK (the one `keyd init`
//! made) carry no `KP` block, blocks under a rotation's LMK carry its check value in `KP`
//! (X9.143: the KBPK's check value), under the block's MAC. A key therefore opens under
//! whichever LMK seals it at the moment it is read, a rewrap cut anywhere leaves every block
//! under one LMK or the other, and resuming is running the rewrap again. A node whose token
//! lacks the LMK a block names says so instead of answering a MAC failure.
//!
//! The steps and the store's LMK states (`store::lmk`):
//! 1. `lmk_form` (dual control): the new LMK is made in this token (generated, or formed from
//!    components) and recorded `pending`; the secrets keyd derived from the original LMK are
//!    sealed into the store first, so they outlive it. On every further node on a shared store
//!    the officers form the same LMK from the same components; it is checked against the
//!    pending one's KCV.
//! 2. `lmk_rewrap`: `pending` becomes `next` (every node seals new blocks under it from its
//!    next housekeeping), then every table is paged through in id order and each block not yet
//!    under the new LMK is opened and sealed again under it, a batch per store transaction,
//!    each block replaced only if unchanged meanwhile. A pass that finds nothing left to move
//!    ends it; then, in one store transaction, the new LMK becomes `current` and the old one
//!    `retired` until the restore window ends.
//! 3. `lmk_destroy` (dual control, or `serve`'s housekeeping when the window ended): a retired
//!    LMK under which no block remains is marked `destroyed` and removed from this token; every
//!    other node removes it from its own token at its next housekeeping.

use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use tr31::{KeyBlock, Profile};

use super::{Service, seal_random};
use crate::Error;
use crate::hsm::{Hsm, Lmk};
use crate::officers::Action;
use crate::store::{LmkMove, LmkRecord, LmkState, Sealed};

/// The secrets derived from the original LMK, by derivation label (see `crate::lmk_secret`).
/// A label added here later is missing from stores rotated before it; its reader must seal it
/// itself then, by reading it with [`Service::late_derived_secret`] (as the webhook key and
/// the portal password key are).
pub(crate) const DERIVED: [&str; 8] = [
    "keyd pan fingerprint key",
    "keyd request fingerprint key",
    "keyd pan storage encryption key",
    "keyd pan storage mac key",
    "keyd officer credential pepper",
    "keyd audit chain key",
    super::webhooks::MASTER_LABEL,
    super::passwords::KEY_LABEL,
];

/// What `lmk_form` did on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    /// The new LMK's check value.
    pub kcv: [u8; 3],
    /// The LMK it replaces.
    pub from: [u8; 3],
    /// This node began the rotation (otherwise it joined one begun elsewhere).
    pub first: bool,
}

/// What a rewrap run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrapped {
    /// Blocks this run moved to the new LMK.
    pub moved: usize,
    /// The LMK they came from (the current one when the run began).
    pub from: [u8; 3],
    /// The new LMK.
    pub to: [u8; 3],
    /// The switch was made: the new LMK is current.
    pub switched: bool,
}

/// The LMK a stored block names: `None` for the original one (no `KP`).
///
/// # Errors
/// [`Error::Store`] for a block that is not a key block or whose `KP` is malformed.
pub(crate) fn kp_of(block: &str) -> Result<Option<[u8; 3]>, Error> {
    let parsed = KeyBlock::parse(block, Profile::Strict)
        .map_err(|_| Error::Store("a stored block is not a key block".into()))?;
    let Some(kp) = parsed.header().optional_block(tr31::BlockId::KP) else {
        return Ok(None);
    };
    let kcv = kp
        .data()
        .strip_prefix("01")
        .and_then(|hex| hex::decode(hex).ok())
        .and_then(|bytes| <[u8; 3]>::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| Error::Store("a stored block's KP names no LMK keyd made".into()))?;
    Ok(Some(kcv))
}

/// Adds the `KP` block naming the LMK a block is sealed under (none for the original LMK).
pub(crate) fn stamp(header: &mut tr31::Header, kp: Option<[u8; 3]>) -> Result<(), Error> {
    header
        .optional_blocks
        .retain(|b| b.id() != tr31::BlockId::KP);
    if let Some(kcv) = kp {
        header.optional_blocks.push(tr31::OptionalBlock::new(
            tr31::BlockId::KP,
            format!("01{}", crate::kcv_hex(kcv)),
        )?);
    }
    Ok(())
}

/// The LMK that opens `block`, if this token holds it; a clear error if it does not (a node
/// that missed a rotation's ceremony, or an LMK destroyed after its restore window).
///
/// # Errors
/// [`Error::Hsm`] naming the LMK this token lacks; as [`kp_of`].
pub(crate) fn lmk_for<'a>(hsm: &'a dyn Hsm, block: &str) -> Result<Lmk<'a>, Error> {
    let kp = kp_of(block)?;
    let (mut held, mut original) = hsm.lmks();
    let missing = |held: &[[u8; 3]], original: Option<[u8; 3]>| match kp {
        None => original.is_none(),
        Some(kcv) => !held.contains(&kcv),
    };
    if missing(&held, original) {
        // Another process on this node (an officer's ceremony) may have added it to the
        // token since this one last looked.
        hsm.refresh_zones()?;
        (held, original) = hsm.lmks();
    }
    match kp {
        None if original.is_none() => Err(Error::Hsm(
            "a stored block is sealed under the original LMK, which this token no longer holds \
             (destroyed after a rotation)"
                .into(),
        )),
        Some(kcv) if !held.contains(&kcv) => Err(Error::Hsm(format!(
            "a stored block is sealed under the LMK with KCV {}, which this token does not hold: \
             form it on this node with `keyd lmk-rotate --components N` (the rotation's \
             components), or it was destroyed",
            crate::kcv_hex(kcv)
        ))),
        kcv => Ok(Lmk { hsm, kcv }),
    }
}

/// Opens a stored block under the LMK it names.
///
/// # Errors
/// As [`lmk_for`]; [`Error::Tr31`] for a block that does not open.
pub(crate) fn open_under_lmk(hsm: &dyn Hsm, block: &str) -> Result<tr31::Opened, Error> {
    let lmk = lmk_for(hsm, block)?;
    Ok(KeyBlock::parse(block, Profile::Strict)?.open_external(&lmk)?)
}

/// The LMK new blocks are sealed under: the one being rotated to once the rewrap began,
/// otherwise the current one (`None`: the original, never rotated).
fn sealing_of(lmks: &[LmkRecord]) -> Option<[u8; 3]> {
    lmks.iter()
        .find(|l| l.state == LmkState::Next)
        .or_else(|| lmks.iter().find(|l| l.state == LmkState::Current))
        .filter(|l| !l.original)
        .map(|l| l.kcv)
}

impl Service {
    /// The LMK new blocks are sealed under, and the `KP` they carry.
    ///
    /// # Errors
    /// [`Error::Hsm`] if this token does not hold it (this node missed the rotation's
    /// ceremony).
    pub(crate) fn sealing_lmk(&self) -> Result<(Lmk<'_>, Option<[u8; 3]>), Error> {
        let kp = *self.sealing.read().unwrap_or_else(PoisonError::into_inner);
        let (held, original) = self.hsm.lmks();
        let ok = match kp {
            None => original.is_some(),
            Some(kcv) => held.contains(&kcv),
        };
        if !ok {
            return Err(Error::Hsm(format!(
                "new keys are sealed under the LMK with KCV {}, which this token does not hold: \
                 form it on this node with `keyd lmk-rotate --components N`",
                kp.map_or_else(|| "(original)".to_owned(), crate::kcv_hex)
            )));
        }
        Ok((
            Lmk {
                hsm: &*self.hsm,
                kcv: kp,
            },
            kp,
        ))
    }

    /// Reads the store's LMK states again (at start, and when the state version moved).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub(crate) fn reload_lmks(&self) -> Result<(), Error> {
        let lmks = self.store.lmks()?;
        *self.sealing.write().unwrap_or_else(PoisonError::into_inner) = sealing_of(&lmks);
        *self
            .lmk_states
            .write()
            .unwrap_or_else(PoisonError::into_inner) = lmks;
        Ok(())
    }

    /// The store's LMKs (empty: never rotated), as last read.
    pub fn lmk_states(&self) -> Vec<LmkRecord> {
        self.lmk_states
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The check value of the LMK that is current in the store (the original one if the LMK
    /// was never rotated).
    ///
    /// # Errors
    /// [`Error::Hsm`] if this token does not hold the original LMK and the store names none.
    pub fn current_lmk(&self) -> Result<[u8; 3], Error> {
        self.reload_lmks()?;
        match self
            .lmk_states()
            .iter()
            .find(|l| l.state == LmkState::Current)
        {
            Some(l) => Ok(l.kcv),
            None => self
                .hsm
                .lmks()
                .1
                .ok_or_else(|| Error::Hsm("this token holds no original LMK".into())),
        }
    }

    /// Step 1 of a rotation on this node (see the module docs), under two officers' approval
    /// of `lmk-rotate lmk`: `key` is the new LMK formed from components, or `None` to have the
    /// token generate it (only where no other node must hold it: a generated LMK exists in this
    /// token alone). On a further node the rotation is already pending: the components must
    /// form the same LMK.
    ///
    /// # Errors
    /// [`Error::DualControl`]; [`Error::Conflict`] for components that form another LMK than
    /// the pending one, or a token that holds it already; [`Error::BadRequest`] for a
    /// generated LMK on a node joining a rotation; [`Error::Hsm`]; [`Error::Store`].
    pub fn lmk_form(&self, key: Option<&[u8]>) -> Result<Rotation, Error> {
        self.reload_lmks()?;
        let from = self.current_lmk()?;
        let lmks = self.lmk_states();
        let under_way = lmks
            .iter()
            .find(|l| matches!(l.state, LmkState::Pending | LmkState::Next))
            .copied();
        if let Some(pending) = under_way {
            if key.is_none() {
                return Err(Error::BadRequest(format!(
                    "a rotation to the LMK with KCV {} is under way: form it on this node from \
                     its components (--components N)",
                    crate::kcv_hex(pending.kcv)
                )));
            }
            if self.hsm.lmks().0.contains(&pending.kcv) {
                return Err(Error::Conflict(
                    "this token holds the new LMK already: run `keyd lmk-rewrap`",
                ));
            }
        }
        self.officers.require(Action::LmkRotate, "lmk")?;
        // A ceremony killed between forming the LMK in the token and recording it left the LMK
        // there: the same components find it and carry on.
        let orphan = key
            .map(|k| crate::keys::kcv(crate::keys::KeyKind::Tmk, k))
            .filter(|kcv| {
                under_way.is_none()
                    && self.hsm.lmks().0.contains(kcv)
                    && !lmks.iter().any(|l| l.kcv == *kcv)
                    && Some(*kcv) != self.hsm.lmks().1
            });
        let kcv = match orphan {
            Some(kcv) => kcv,
            None => self.hsm.add_lmk(key)?,
        };
        if let Some(pending) = under_way {
            if kcv != pending.kcv {
                self.hsm.destroy_lmk(kcv)?;
                return Err(Error::Conflict(
                    "the components form another LMK than the one the rotation is to (compare \
                     the KCVs); nothing was kept",
                ));
            }
            return Ok(Rotation {
                kcv,
                from,
                first: false,
            });
        }
        let begun = self.seal_derived_secrets().and_then(|()| {
            let mut moves = Vec::with_capacity(2);
            if !lmks.iter().any(|l| l.kcv == from) {
                moves.push(LmkMove {
                    kcv: from,
                    original: true,
                    from: None,
                    to: LmkState::Current,
                });
            }
            moves.push(LmkMove {
                kcv,
                original: false,
                from: None,
                to: LmkState::Pending,
            });
            self.store.move_lmks(&moves, crate::unix_now())
        });
        if let Err(e) = begun {
            // Not recorded: the new LMK must not stay in this token alone.
            let _ = self.hsm.destroy_lmk(kcv);
            return Err(e);
        }
        self.reload_lmks()?;
        Ok(Rotation {
            kcv,
            from,
            first: true,
        })
    }

    /// Seals the secrets derived from the original LMK into the store under the LMK that
    /// seals new blocks now, where the rewrap finds them (first rotation only; later ones find
    /// them there already).
    fn seal_derived_secrets(&self) -> Result<(), Error> {
        for label in DERIVED {
            if self.store.lmk_secret(label)?.is_some() {
                continue;
            }
            let value = crate::lmk_secret(&*self.hsm, &*self.store, label)?;
            self.seal_secret(label, &value)?;
        }
        Ok(())
    }

    /// Seals a 32-byte secret under the LMK that seals new blocks now, bound to its label, and
    /// stores it unless a secret of that label is stored already (the first one stays: the
    /// caller reads back what is stored).
    ///
    /// # Errors
    /// [`Error::Hsm`] if this token lacks that LMK; [`Error::Store`].
    pub(super) fn seal_secret(&self, label: &str, value: &[u8; 32]) -> Result<(), Error> {
        let (lmk, kp) = self.sealing_lmk()?;
        let mut header = crate::keys::secret_storage_header(label)?;
        stamp(&mut header, kp)?;
        let block = seal_random(&lmk, &header, &tr31::Key::new(&value[..])?)?;
        self.store.insert_lmk_secret(label, &block)
    }

    /// A secret of [`DERIVED`] whose label came after the first ones, read as the others are
    /// (`crate::lmk_secret`); run once the LMK states are loaded. A store that went through an
    /// LMK rotation before the label existed has no sealed copy of it (the rotation sealed
    /// only the secrets it knew), and deriving it from the original LMK would give another
    /// key once that LMK is destroyed, or none at all if it is gone already. So the secret is
    /// sealed now, under the LMK that seals new blocks: derived from the original LMK while
    /// this token holds it (as the rotation would have sealed it), otherwise 32 random bytes
    /// (nothing can have been made under it yet, since no keyd knew the label); stored only
    /// if no node stored one first, then read back, so nodes starting at once agree on one
    /// value.
    ///
    /// # Errors
    /// As `crate::lmk_secret`; [`Error::Hsm`] if this token lacks the LMK new blocks are
    /// sealed under.
    pub(super) fn late_derived_secret(
        &self,
        label: &str,
    ) -> Result<zeroize::Zeroizing<[u8; 32]>, Error> {
        if self.store.lmk_secret(label)?.is_none() && !self.lmk_states().is_empty() {
            let value = if self.hsm.lmks().1.is_some() {
                crate::derive_from_lmk(&*self.hsm, label)?
            } else {
                let mut fresh = zeroize::Zeroizing::new([0u8; 32]);
                self.hsm.random(&mut fresh[..])?;
                fresh
            };
            self.seal_secret(label, &value)?;
            tracing::info!(
                label,
                "sealed a secret missing from a store rotated before it existed"
            );
        }
        crate::lmk_secret(&*self.hsm, &*self.store, label)
    }

    /// Steps 2 and 3 of a rotation (see the module docs): moves every block to the new LMK in
    /// batches of `batch`, calling `after_batch` with the number moved so far after each one
    /// (for progress, and for tests that stop the run there), then makes the switch. Running
    /// it again after an interruption resumes where the blocks are.
    ///
    /// # Errors
    /// [`Error::NotFound`] without a rotation under way; [`Error::Hsm`] if this token lacks
    /// the new LMK or one a block is under; [`Error::Store`] for a block that does not open
    /// (the rewrap stops there, naming it).
    pub fn lmk_rewrap(
        &self,
        batch: usize,
        after_batch: &mut dyn FnMut(usize),
    ) -> Result<Rewrapped, Error> {
        self.reload_lmks()?;
        let lmks = self.lmk_states();
        let target = lmks
            .iter()
            .find(|l| matches!(l.state, LmkState::Pending | LmkState::Next))
            .copied()
            .ok_or(Error::NotFound("LMK rotation under way"))?;
        let from = lmks
            .iter()
            .find(|l| l.state == LmkState::Current)
            .map(|l| l.kcv)
            .ok_or(Error::NotFound("current LMK"))?;
        if !self.hsm.lmks().0.contains(&target.kcv) {
            return Err(Error::Hsm(format!(
                "this token does not hold the new LMK (KCV {}): form it here first with `keyd \
                 lmk-rotate --components N`",
                crate::kcv_hex(target.kcv)
            )));
        }
        if target.state == LmkState::Pending {
            match self.store.move_lmks(
                &[LmkMove {
                    kcv: target.kcv,
                    original: false,
                    from: Some("pending"),
                    to: LmkState::Next,
                }],
                crate::unix_now(),
            ) {
                // Conflict: another node's rewrap began it.
                Ok(()) | Err(Error::Conflict(_)) => {}
                Err(e) => return Err(e),
            }
            self.reload_lmks()?;
        }
        let new = Lmk {
            hsm: &*self.hsm,
            kcv: Some(target.kcv),
        };
        let mut moved = 0;
        loop {
            let mut moved_this_pass = 0;
            for table in Sealed::ALL {
                let mut after = String::new();
                loop {
                    let page = self.store.sealed_blocks(table, &after, batch.max(1))?;
                    let Some((last, _)) = page.last() else {
                        break;
                    };
                    after.clone_from(last);
                    let mut reseal = Vec::new();
                    for (id, block) in page {
                        // An erased key's block is empty: nothing to move.
                        if block.is_empty() || kp_of(&block)? == Some(target.kcv) {
                            continue;
                        }
                        let opened = open_under_lmk(&*self.hsm, &block).map_err(|e| {
                            Error::Store(format!(
                                "{} {id}: its block does not open under its LMK ({e}); the \
                                 rewrap stopped here",
                                table.name()
                            ))
                        })?;
                        let mut header = opened.header;
                        header
                            .optional_blocks
                            .retain(|b| b.id() != tr31::BlockId::PB);
                        stamp(&mut header, Some(target.kcv))?;
                        let sealed = seal_random(&new, &header, &opened.key)?;
                        reseal.push((id, block, sealed));
                    }
                    if !reseal.is_empty() {
                        let n = self.store.reseal(table, &reseal)?;
                        moved += n;
                        moved_this_pass += n;
                        after_batch(moved);
                    }
                }
            }
            if moved_this_pass == 0 {
                break;
            }
        }
        let now = crate::unix_now();
        let window = self.officers.policy().lmk_restore_window_secs;
        self.store.move_lmks(
            &[
                LmkMove {
                    kcv: from,
                    original: false,
                    from: Some("current"),
                    to: LmkState::Retired {
                        destroy_after: now.saturating_add(window),
                    },
                },
                LmkMove {
                    kcv: target.kcv,
                    original: false,
                    from: Some("next"),
                    to: LmkState::Current,
                },
            ],
            now,
        )?;
        self.reload_lmks()?;
        Ok(Rewrapped {
            moved,
            from,
            to: target.kcv,
            switched: true,
        })
    }

    /// Counts the blocks still sealed under the LMK `kcv` (a full pass over the store).
    ///
    /// # Errors
    /// [`Error::Store`].
    pub fn blocks_under(&self, kcv: [u8; 3]) -> Result<usize, Error> {
        let original = self.lmk_states().iter().any(|l| l.kcv == kcv && l.original);
        let mut n = 0;
        for table in Sealed::ALL {
            let mut after = String::new();
            loop {
                let page = self.store.sealed_blocks(table, &after, 1000)?;
                let Some((last, _)) = page.last() else {
                    break;
                };
                after.clone_from(last);
                for (_, block) in page.iter().filter(|(_, b)| !b.is_empty()) {
                    let kp = kp_of(block)?;
                    if kp == Some(kcv) || (kp.is_none() && original) {
                        n += 1;
                    }
                }
            }
        }
        Ok(n)
    }

    /// Destroys a retired LMK: in the store (every node then removes it from its token) and in
    /// this token. Officers ask for it before the restore window ends, under two approvals of
    /// `lmk-destroy <KCV>`; `serve` does it by itself when the window has ended.
    ///
    /// # Errors
    /// [`Error::DualControl`]; [`Error::NotFound`] for an LMK that is not retired;
    /// [`Error::Conflict`] while blocks remain under it; [`Error::Store`]; [`Error::Hsm`].
    pub fn lmk_destroy(&self, kcv: [u8; 3], approved: bool) -> Result<(), Error> {
        self.reload_lmks()?;
        if !self
            .lmk_states()
            .iter()
            .any(|l| l.kcv == kcv && matches!(l.state, LmkState::Retired { .. }))
        {
            return Err(Error::NotFound("retired LMK with that KCV"));
        }
        if approved {
            self.officers
                .require(Action::LmkDestroy, &crate::kcv_hex(kcv))?;
        }
        if self.blocks_under(kcv)? > 0 {
            return Err(Error::Conflict(
                "blocks are still sealed under that LMK: run `keyd lmk-rewrap` first",
            ));
        }
        self.store.move_lmks(
            &[LmkMove {
                kcv,
                original: false,
                from: Some("retired"),
                to: LmkState::Destroyed,
            }],
            crate::unix_now(),
        )?;
        self.reload_lmks()?;
        match self.hsm.destroy_lmk(kcv) {
            Ok(()) | Err(Error::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `serve`'s part (at every housekeeping): removes from this token the LMKs destroyed
    /// through another node, and destroys a retired LMK whose restore window ended (checked
    /// at most once a minute). Returns the LMK this node destroyed in the store, for the audit
    /// log.
    ///
    /// # Errors
    /// [`Error::Store`]; [`Error::Hsm`].
    pub fn lmk_housekeeping(&self) -> Result<Option<[u8; 3]>, Error> {
        let states = self.lmk_states();
        let held = self.hsm.lmks().0;
        let now = crate::unix_now();
        // A node that missed a rotation's ceremony says so loudly (once a minute), not only
        // in each refused request's debug line.
        if let Some(missing) = states.iter().find(|l| {
            matches!(l.state, LmkState::Current | LmkState::Next) && !held.contains(&l.kcv)
        }) && self.next_lmk_warning.load(Ordering::Acquire) <= now
        {
            self.next_lmk_warning.store(now + 60, Ordering::Release);
            tracing::error!(
                lmk_kcv = %crate::kcv_hex(missing.kcv),
                "this node's token does not hold the LMK the key store uses ({}): keys sealed \
                 under it are refused here; form it with `keyd lmk-rotate --components N`",
                missing.state.name()
            );
        }
        for gone in states
            .iter()
            .filter(|l| l.state == LmkState::Destroyed && held.contains(&l.kcv))
        {
            self.hsm.destroy_lmk(gone.kcv)?;
            tracing::info!(
                lmk_kcv = %crate::kcv_hex(gone.kcv),
                "retired LMK destroyed in this token (destroyed in the key store)"
            );
        }
        let now = crate::unix_now();
        let due = states.iter().find(
            |l| matches!(l.state, LmkState::Retired { destroy_after } if destroy_after <= now),
        );
        let Some(due) = due else {
            return Ok(None);
        };
        if self.next_lmk_check.load(Ordering::Acquire) > now {
            return Ok(None);
        }
        self.next_lmk_check.store(now + 60, Ordering::Release);
        match self.lmk_destroy(due.kcv, false) {
            Ok(()) => Ok(Some(due.kcv)),
            // Another node was first, or blocks remain (logged; retried in a minute).
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use keyd_proto::Secret;
    use keyd_proto::message as m;

    use super::*;
    use crate::Placement;
    use crate::hsm::SoftwareHsm;
    use crate::officers::Policy;
    use crate::service::tests::{device, hmac, node, unwrap_set};
    use crate::store::{KeyStore, MemoryStore};

    /// Everything a node serves from the store, checked against what it answered before.
    struct Probe {
        identity: m::IdentityKey,
        key_set_id: String,
        msk: Vec<u8>,
        imported: String,
        sealed_pan: Vec<u8>,
        fingerprint: [u8; 32],
    }

    fn probe(s: &Service, id: &str) -> Probe {
        let identity = device(s, id);
        let set = s
            .key_set_create(&m::KeySetCreate {
                device_id: id.into(),
            })
            .unwrap();
        let export = s
            .key_set_export(&m::KeySetExport {
                device_id: id.into(),
                key_set_id: set.key_set_id.clone(),
            })
            .unwrap();
        let msk = unwrap_set(&export)["msk"].expose_secret().to_vec();
        let imported = s
            .key_generate(
                &tr31::Header::parse("D0000P0TB00E0000", Profile::Strict).unwrap(),
                "partner ZPK",
            )
            .unwrap()
            .key_id;
        Probe {
            identity,
            key_set_id: set.key_set_id,
            msk,
            imported,
            sealed_pan: s
                .pan_seal(&m::PanSeal {
                    pan: Secret::new(b"4242424242424242"),
                })
                .unwrap()
                .sealed,
            fingerprint: s
                .pan_fingerprint(&m::PanFingerprint {
                    pan: Secret::new(b"4242424242424242"),
                })
                .unwrap()
                .value,
        }
    }

    /// Every stored key of the probe still does what it did.
    fn check(s: &Service, id: &str, p: &Probe) {
        s.forget_all_for_tests();
        let msg = b"attest";
        s.attest_verify(&m::AttestVerify {
            device_id: id.into(),
            key_id: p.identity.key_id.clone(),
            message: msg.to_vec(),
            signature: hmac(p.identity.secret.expose(), msg),
        })
        .unwrap();
        let export = s
            .key_set_export(&m::KeySetExport {
                device_id: id.into(),
                key_set_id: p.key_set_id.clone(),
            })
            .unwrap();
        assert_eq!(unwrap_set(&export)["msk"].expose_secret(), &p.msk[..]);
        s.tr31_export(&m::Tr31Export {
            key_id: p.imported.clone(),
            zone: "z1".into(),
        })
        .unwrap();
        assert_eq!(
            s.pan_open(&m::PanOpen {
                sealed: p.sealed_pan.clone()
            })
            .unwrap()
            .pan
            .expose(),
            b"4242424242424242"
        );
        assert_eq!(
            s.pan_fingerprint(&m::PanFingerprint {
                pan: Secret::new(b"4242424242424242"),
            })
            .unwrap()
            .value,
            p.fingerprint,
            "fingerprints survive the rotation"
        );
    }

    #[test]
    fn an_interrupted_rewrap_resumes_and_every_key_opens_under_whichever_lmk_seals_it() {
        let store = Arc::new(MemoryStore::new());
        let one = node(&store, [7; 32]);
        one.zmk_import(&m::ZmkImport {
            zone: "z1".into(),
            key: Secret::new(&[0x5A; 32]),
        })
        .unwrap();
        let probes: Vec<(String, Probe)> = (1..=4)
            .map(|i| {
                let id = format!("POS-0000000{i}");
                let p = probe(&one, &id);
                (id, p)
            })
            .collect();
        let audit_before = one.audit_key().unwrap();
        let old_block = store
            .key(&probes[0].1.identity.key_id)
            .unwrap()
            .unwrap()
            .block;
        assert_eq!(kp_of(&old_block).unwrap(), None, "the original LMK: no KP");
        let from = one.current_lmk().unwrap();

        // A second node on the same store, its token formed from the same LMK.
        let two = node(&store, [7; 32]);
        check(&two, &probes[1].0, &probes[1].1);

        // The rotation: a generated LMK on node one; node two joins with components only.
        let formed = one.lmk_form(None).unwrap();
        assert!(formed.first);
        assert_eq!(formed.from, from);
        assert!(matches!(two.lmk_form(None), Err(Error::BadRequest(_))));
        assert!(matches!(
            two.lmk_form(Some(&[9; 32])),
            Err(Error::Conflict(_))
        ));
        assert!(
            !two.hsm().lmks().0.iter().any(|k| *k != from),
            "wrong components leave nothing in the token"
        );

        // Interrupted three times (the run dies in its callback, as a killed process would
        // between batches): each time every key opens, on both nodes' view of the store.
        for stop in [2, 5, 9] {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                one.lmk_rewrap(2, &mut |moved| {
                    if moved >= stop {
                        std::panic::panic_any("killed");
                    }
                })
            }));
            assert!(run.is_err(), "stopped after {stop}");
            for (id, p) in &probes {
                check(&one, id, p);
            }
            // New keys made meanwhile are sealed under the new LMK.
            let fresh = one.device_create(&m::DeviceCreate {
                device_id: format!("POS-000000A{stop}"),
                zone: "z1".into(),
            });
            let block = store.key(&fresh.unwrap().key_id).unwrap().unwrap().block;
            assert_eq!(kp_of(&block).unwrap(), Some(formed.kcv));
        }
        // Node two's token lacks the new LMK: it says so, naming the LMK (once its
        // housekeeping read the LMK states, it also refuses to seal under the old one).
        two.housekeeping().unwrap();
        let err = two
            .attest_verify(&m::AttestVerify {
                device_id: "POS-000000A2".into(),
                key_id: store
                    .device("POS-000000A2")
                    .unwrap()
                    .unwrap()
                    .identity_key_id,
                message: b"x".to_vec(),
                signature: [0; 32],
            })
            .unwrap_err();
        assert!(
            err.to_string().contains(&crate::kcv_hex(formed.kcv)),
            "{err}"
        );
        let err = two.key_set_create(&m::KeySetCreate {
            device_id: "POS-00000001".into(),
        });
        assert!(matches!(err, Err(Error::Hsm(_))), "{err:?}");

        // Resumed to the end: the switch.
        let done = one.lmk_rewrap(2, &mut |_| {}).unwrap();
        assert!(done.switched);
        assert_eq!((done.from, done.to), (from, formed.kcv));
        assert_eq!(one.blocks_under(from).unwrap(), 0);
        let states = one.lmk_states();
        assert!(
            states
                .iter()
                .any(|l| l.kcv == formed.kcv && l.state == LmkState::Current)
        );
        assert!(
            states
                .iter()
                .any(|l| l.kcv == from && matches!(l.state, LmkState::Retired { .. }))
        );
        for (id, p) in &probes {
            check(&one, id, p);
        }
        assert_eq!(
            format!("{:?}", one.audit_key().unwrap().mac_for_tests(b"r")),
            format!("{:?}", audit_before.mac_for_tests(b"r")),
            "the audit chain keeps its key"
        );
        // A node that restarts after the switch without the new LMK in its token does not
        // start, and says which LMK it lacks.
        let three = {
            let hsm = SoftwareHsm::new();
            hsm.import_lmk(&[7; 32]).unwrap();
            Service::new(
                Arc::new(hsm),
                Arc::clone(&store) as Arc<dyn KeyStore>,
                Placement::Memory,
                3600,
                100,
            )
        };
        let err = three.map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(&crate::kcv_hex(formed.kcv)), "{err}");
        assert_eq!(one.lmk_kcv().unwrap(), crate::kcv_hex(formed.kcv));

        // Destruction: refused while approvals are missing (dual control on), then done; the
        // old block no longer opens anywhere in this token.
        assert!(
            open_under_lmk(one.hsm(), &old_block).is_ok(),
            "restore window"
        );
        one.lmk_destroy(from, true).unwrap();
        let err = open_under_lmk(one.hsm(), &old_block).unwrap_err();
        assert!(err.to_string().contains("no longer holds"), "{err}");
        for (id, p) in &probes {
            check(&one, id, p);
        }
        // Node two learns of it at its housekeeping and removes it from its token.
        two.housekeeping().unwrap();
        assert_eq!(two.lmk_housekeeping().unwrap(), None);
        assert!(!two.hsm().lmks().0.contains(&from));
        // A second rotation starts from the first one's LMK and finds the secrets stored.
        let again = one.lmk_form(None).unwrap();
        assert_eq!(again.from, formed.kcv);
        one.lmk_rewrap(100, &mut |_| {}).unwrap();
        for (id, p) in &probes {
            check(&one, id, p);
        }
    }

    #[test]
    fn a_ceremony_cut_before_its_record_is_run_again_with_the_same_components() {
        let store = Arc::new(MemoryStore::new());
        let s = node(&store, [3; 32]);
        // As if killed after the token made the LMK and before the store recorded it.
        let kcv = s.hsm().add_lmk(Some(&[4; 32])).unwrap();
        assert_eq!(s.lmk_states(), vec![]);
        let formed = s.lmk_form(Some(&[4; 32])).unwrap();
        assert_eq!(formed.kcv, kcv);
        assert!(formed.first);
        assert!(s.lmk_rewrap(10, &mut |_| {}).unwrap().switched);
    }

    #[test]
    fn the_rotation_and_the_destruction_need_two_officers() {
        let store = Arc::new(MemoryStore::new());
        let s = node(&store, [3; 32]).with_policy(Policy {
            kdf_iterations: crate::officers::MIN_ITERATIONS,
            restore_window_secs: 1,
            lmk_restore_window_secs: 0,
            ..Policy::default()
        });
        let s = s.unwrap();
        assert!(matches!(s.lmk_form(None), Err(Error::DualControl(_))));
        assert!(s.hsm().lmks().0.len() == 1, "nothing made without approval");
        s.officers()
            .approve("alice", Action::LmkRotate, "lmk")
            .unwrap();
        s.officers()
            .approve("bob", Action::LmkRotate, "lmk")
            .unwrap();
        let formed = s.lmk_form(None).unwrap();
        let done = s.lmk_rewrap(10, &mut |_| {}).unwrap();
        assert_eq!(done.to, formed.kcv);
        // A window of 0: serve's housekeeping destroys the old LMK by itself, once.
        assert_eq!(s.lmk_housekeeping().unwrap(), Some(done.from));
        assert_eq!(s.lmk_housekeeping().unwrap(), None);
        assert!(!s.hsm().lmks().0.contains(&done.from));
        assert!(
            matches!(s.lmk_destroy(done.to, true), Err(Error::NotFound(_))),
            "the current LMK is never destroyed"
        );
    }
}
