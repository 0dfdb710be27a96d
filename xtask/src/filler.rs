//! Deterministic essay-like filler text for benchmark contexts.

const OPENINGS: [&str; 8] = [
    "In the spring of that year,",
    "Much later,",
    "According to the old ledger,",
    "On a cold morning,",
    "Without much warning,",
    "As the story goes,",
    "Some time before the fair,",
    "Late one evening,",
];
const PEOPLE: [&str; 10] = [
    "the harbour master",
    "a retired surveyor",
    "the schoolmistress",
    "a young apprentice",
    "the town clerk",
    "an itinerant tinker",
    "the organist",
    "a fisherman's widow",
    "the stationmaster",
    "two brothers from the valley",
];
const ACTIONS: [&str; 10] = [
    "rebuilt",
    "catalogued",
    "sketched",
    "argued about",
    "walked past",
    "sold",
    "inherited",
    "misplaced",
    "photographed",
    "repainted",
];
const THINGS: [&str; 10] = [
    "the granary by the canal",
    "a chest of nautical charts",
    "the weather vane on the hall",
    "the footbridge over the weir",
    "a set of brass scales",
    "the ledger of the cooperative",
    "an orchard of late pears",
    "the signal box at the junction",
    "a portrait of the founder",
    "the stone steps to the quay",
];
const ENDINGS: [&str; 8] = [
    "before the frost arrived.",
    "while the river was in flood.",
    "and nobody thought it strange.",
    "to the surprise of the neighbours.",
    "as the last train left.",
    "during the long drought.",
    "for reasons never recorded.",
    "under a low grey sky.",
];

/// `n` sentences from a linear congruential generator seeded with `seed`.
pub fn essay(seed: u64, n: usize) -> String {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut pick = |len: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % len as u64) as usize
    };
    let mut out = String::new();
    for i in 0..n {
        if i > 0 {
            out.push_str(if i % 7 == 0 { "\n\n" } else { " " });
        }
        out.push_str(&format!(
            "{} {} {} {} {}",
            OPENINGS[pick(OPENINGS.len())],
            PEOPLE[pick(PEOPLE.len())],
            ACTIONS[pick(ACTIONS.len())],
            THINGS[pick(THINGS.len())],
            ENDINGS[pick(ENDINGS.len())]
        ));
    }
    out
}
