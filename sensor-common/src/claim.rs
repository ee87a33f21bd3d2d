//! Who carries out a session's finishing effects when both of its socket's directions finish
//! it at once.
//!
//! The ingress hook runs before the socket's lock is taken, so a packet leaving (the
//! client's first message, say) and one arriving (the server's FIN) can both be judged at
//! once on two CPUs, and both can end the session (`effect::DONE`). Exactly one of them
//! must forget it; but the one that got there first may have had nothing to count (a close
//! with nothing sent yet) while the other decided a verdict from bytes the client really
//! sent (a CancelRequest, an HTTP/2 preface, something not pgwire): that verdict must still
//! be counted, once. The kernel keeps the claim word in the socket's state and calls
//! [`claim`] under the state's spin lock; the rule lives here so it is tested on the host.

/// The claim word's bits (`ConnState::decision_claimed`); zero: nobody finished yet.
pub mod claim_bits {
    /// A program finished the session: it forgot it.
    pub const FINISHED: u32 = 1;
    /// A program that finished the session counted its verdict.
    pub const COUNTED: u32 = 2;
}

/// What a program finishing a session carries out of its effects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The first to finish: every effect (count, report, forget).
    All,
    /// The session was finished first by a program with no verdict to count: count and
    /// report this verdict, but do not forget the session again.
    VerdictOnly,
    /// Another program finished the session and counted what there was: nothing to do.
    Nothing,
}

/// Take the claim for a program whose effects finish the session; `counts_verdict`: they
/// also count a verdict. Updates `word` (held under a lock by the caller). Inlined: the
/// kernel calls it with the spin lock held, where no function call is allowed.
#[inline(always)]
pub fn claim(word: &mut u32, counts_verdict: bool) -> Claim {
    let counted = if counts_verdict { claim_bits::COUNTED } else { 0 };
    if *word & claim_bits::FINISHED == 0 {
        *word = claim_bits::FINISHED | counted;
        Claim::All
    } else if counts_verdict && *word & claim_bits::COUNTED == 0 {
        *word |= claim_bits::COUNTED;
        Claim::VerdictOnly
    } else {
        Claim::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_verdict_after_a_close_with_nothing_to_count_is_still_counted() {
        let mut word = 0;
        assert_eq!(claim(&mut word, false), Claim::All);
        assert_eq!(claim(&mut word, true), Claim::VerdictOnly);
        assert_eq!(claim(&mut word, true), Claim::Nothing);
    }

    #[test]
    fn the_first_verdict_wins() {
        let mut word = 0;
        assert_eq!(claim(&mut word, true), Claim::All);
        assert_eq!(claim(&mut word, true), Claim::Nothing);
        assert_eq!(claim(&mut word, false), Claim::Nothing);
    }

    proptest! {
        /// Whatever the order of the programs finishing one session: it is forgotten once,
        /// and a verdict is counted once if any of them had one, never otherwise.
        #[test]
        fn forgotten_once_and_counted_once(finishers in prop::collection::vec(any::<bool>(), 1..6)) {
            let mut word = 0;
            let (mut forgotten, mut counted) = (0, 0);
            for counts_verdict in finishers.iter().copied() {
                match claim(&mut word, counts_verdict) {
                    Claim::All => {
                        forgotten += 1;
                        counted += u32::from(counts_verdict);
                    }
                    Claim::VerdictOnly => {
                        prop_assert!(counts_verdict);
                        counted += 1;
                    }
                    Claim::Nothing => {}
                }
            }
            prop_assert_eq!(forgotten, 1);
            prop_assert_eq!(counted, u32::from(finishers.contains(&true)));
        }
    }
}
