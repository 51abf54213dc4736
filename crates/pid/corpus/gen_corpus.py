#!/usr/bin/env python3
"""Generate the labelled evaluation corpus for sitrep-pid (deterministic).

    python3 crates/pid/corpus/gen_corpus.py > crates/pid/corpus/corpus.jsonl

All data is synthetic: NHS numbers come from the 999 test range, phone numbers from
Ofcom's drama ranges, names are invented combinations. Messages are written in an
inline markup, `[[kind|text]]`, which this script turns into text plus byte spans
(UTF-8 offsets, as the Rust crate reports them). Each output line is
{"text": ..., "spans": [{"kind", "start", "end", "value"}]}; `value` lets the test
check every offset.
"""
import json
import random
import re
import sys

R = random.Random(20240603)

FIRST = ["Jane", "John", "Aisha", "Mohammed", "Siobhan", "Gareth", "Priya", "Tomasz",
         "Olusegun", "Chloe", "Dylan", "Fatima", "Hamish", "Niamh", "Rhys", "Zoë",
         "Eleanor", "Arjun", "Bethany", "Callum", "Deborah", "Ewan", "Grace", "Harjit",
         "Imran", "Joanna", "Kwame", "Lucy", "Martin", "Nadia", "Owen", "Ruth"]
LAST = ["Smith", "Jones", "Okafor", "Patel", "O'Brien", "McDonald", "Nowak", "Williams",
        "Khan", "Evans", "Campbell", "Hughes", "Begum", "Thompson", "Fraser", "Ahmed",
        "Walsh", "Singh", "Morgan", "Taylor-Reid", "Kowalski", "Murphy", "Davies", "Ali",
        "MacLeod", "Brennan", "Achebe", "Lloyd", "Chowdhury", "Gallagher", "Wright", "Henderson"]
TITLES = ["Mr", "Mrs", "Ms", "Miss", "Dr", "Mr.", "Mrs.", "Dr."]
STREETS = ["Orchard Mews", "Kings Road", "Mill Lane", "Station Road", "Acacia Avenue",
           "Church Street", "Victoria Terrace", "Oak Close", "Primrose Hill", "Albert Street",
           "Beech Grove", "Meadow Way", "Holly Crescent", "Park View", "Chapel Walk"]
TOWNS = ["Leeds", "Otley", "Manchester", "London", "Cardiff", "Glasgow", "Bristol", "Hull",
         "Wakefield", "Sheffield"]
AREAS = ["LS", "M", "SW", "CF", "G", "BS", "HU", "WF", "S", "B", "NE", "EH", "BD", "YO", "L"]
INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"


def mod11(d9):
    s = sum(int(c) * w for c, w in zip(d9, range(10, 1, -1)))
    c = 11 - s % 11
    return None if c == 10 else (0 if c == 11 else c)


def valid_number(prefix):
    while True:
        d9 = prefix + "".join(R.choice("0123456789") for _ in range(9 - len(prefix)))
        c = mod11(d9)
        if c is not None:
            return d9 + str(c)


def invalid_number():
    while True:
        d9 = "".join(R.choice("0123456789") for _ in range(9))
        d9 = R.choice("12345678") + d9[1:]
        c = mod11(d9)
        wrong = [str(x) for x in range(10) if c is None or x != c]
        return d9 + R.choice(wrong)


def fmt334(n, style=None):
    style = style or R.choice(["plain", "space", "space", "dash"])
    if style == "plain":
        return n
    sep = " " if style == "space" else "-"
    return n[:3] + sep + n[3:6] + sep + n[6:]


def m(kind, text):
    return f"[[{kind}|{text}]]"


# ---------- PID generators (return markup) ----------

def nhs():
    n = valid_number("999") if R.random() < 0.8 else valid_number(R.choice(["4", "6", "7"]))
    lead = R.choice(["NHS ", "NHS no ", "NHS number: ", "NHS# ", "nhs no. ", "", "", "NHS No: "])
    return lead + m("nhs_number", fmt334(n))


def chi():
    while True:
        day, month, yy = R.randint(1, 28), R.randint(1, 12), R.randint(30, 99)
        n = valid_number(f"{day:02d}{month:02d}{yy:02d}")
        if n.startswith(f"{day:02d}{month:02d}{yy:02d}"):
            break
    lead = R.choice(["CHI ", "CHI: ", "CHI no ", "chi number "])
    return lead + m("chi_number", n)


def date_text(year=None):
    d, mo = R.randint(1, 28), R.randint(1, 12)
    y = year or R.randint(1930, 2005)
    months = ["January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December"]
    suf = {1: "st", 2: "nd", 3: "rd", 21: "st", 22: "nd", 23: "rd"}.get(d, "th")
    return R.choice([
        f"{d:02d}/{mo:02d}/{y}", f"{d}/{mo}/{y}", f"{d:02d}/{mo:02d}/{y % 100:02d}",
        f"{d:02d}.{mo:02d}.{y}", f"{d:02d}-{mo:02d}-{y}", f"{y}-{mo:02d}-{d:02d}",
        f"{d}{suf} {months[mo - 1]} {y}", f"{d} {months[mo - 1][:3]} {y}",
        f"{months[mo - 1]} {d}, {y}", f"{d} {months[mo - 1]} {y}", f"{d:02d} {mo:02d} {y}",
        f"{d}{suf} of {months[mo - 1]} {y}", f"{d}-{months[mo - 1][:3]}-{y % 100:02d}",
    ])


def dob():
    kw = R.choice(["DOB ", "DOB: ", "D.O.B. ", "d.o.b ", "dob ", "born ", "born on ",
                   "date of birth ", "Date of birth: ", "DoB ", "DOB - "])
    if R.random() < 0.1:
        return m("date_of_birth", date_text()) + " (DOB)"
    return kw + m("date_of_birth", date_text())


def postcode_text():
    area = R.choice(AREAS)
    district = str(R.randint(1, 28))
    inward = str(R.randint(0, 9)) + R.choice(INWARD_LETTERS) + R.choice(INWARD_LETTERS)
    return area + district + R.choice([" ", " ", " ", ""]) + inward


def postcode():
    lead = R.choice(["postcode ", "lives in ", "from ", "address postcode: ", "PC "])
    return lead + m("postcode", postcode_text())


def phone():
    x = R.randint(0, 999)
    num = R.choice([
        f"07700 900{x:03d}", f"07700900{x:03d}", f"+44 7700 900{x:03d}", f"07700 900 {x:03d}",
        f"0113 496 0{x:03d}", f"020 7946 0{x:03d}", f"0161 496 0{x:03d}", f"01632 960{x:03d}",
        f"+44 (0)20 7946 0{x:03d}", f"+447700900{x:03d}", f"(0113) 496 0{x:03d}",
        f"07700-900-{x:03d}",
    ])
    lead = R.choice(["call ", "tel ", "mob ", "contact on ", "ring daughter on ",
                     "NOK number ", "phone: ", "wife's mobile "])
    return lead + m("phone", num)


def email():
    f, last = R.choice(FIRST).lower().replace("ë", "e"), R.choice(LAST).lower().replace("'", "")
    addr = R.choice([f"{f}.{last}@nhs.net", f"{f[0]}{last}@example.com",
                     f"{f}_{last}{R.randint(1, 99)}@example.org.uk", f"{last}.{f}@gmail.com"])
    lead = R.choice(["email ", "e-mail: ", "send to ", "contact "])
    return lead + m("email", addr)


def hospital():
    ident = R.choice([f"A{R.randint(1000000, 9999999)}", f"RX{R.randint(10000000, 99999999)}",
                      str(R.randint(1000000, 9999999)), f"K{R.randint(100000, 999999)}",
                      f"M{R.randint(100000, 999999)}", f"{R.randint(100, 999)} {R.randint(1000, 9999)}"])
    lead = R.choice(["MRN ", "MRN: ", "Hosp no ", "hospital number ", "Hosp No. ", "hosp num ",
                     "unit no ", "MRN# ", "hospital no: ", "Hosp no: "])
    return lead + m("hospital_number", ident)


def full_name():
    return f"{R.choice(FIRST)} {R.choice(LAST)}"


def name():
    style = R.random()
    if style < 0.45:
        who = R.choice([R.choice(LAST), full_name(), R.choice(LAST).upper()])
        return f"{R.choice(TITLES)} " + m("person_name", who)
    if style < 0.65:
        return R.choice(["patient ", "pt ", "Patient "]) + m("person_name", full_name())
    if style < 0.8:
        return R.choice(["name: ", "Name: ", "named ", "known as "]) + m("person_name", R.choice([full_name(), R.choice(FIRST)]))
    if style < 0.9:
        return m("person_name", R.choice([R.choice(FIRST), full_name()])) + R.choice(["'s mum", "'s daughter", "'s wife", "'s husband", "'s dad"])
    return R.choice(["wife ", "son ", "daughter ", "NOK ", "husband "]) + m("person_name", R.choice(FIRST))


def address():
    num = R.randint(1, 240)
    flat = f"Flat {R.randint(1, 12)}, " if R.random() < 0.2 else ""
    town = R.choice(TOWNS)
    a = f"{flat}{num} {R.choice(STREETS)}, {town} {postcode_text()}"
    lead = R.choice(["lives at ", "home address ", "address: ", "from ", "discharge to "])
    return lead + m("address", a)


PID = [nhs, nhs, nhs, chi, dob, dob, postcode, phone, email, hospital, hospital, name, name,
       name, address]


# ---------- Hard negatives (no PID) ----------

def neg():
    x = R.randint
    return R.choice([
        f"MI-{x(1, 200):04d}", f"major incident MI-{x(1, 200):04d} declared {x(0, 23):02d}:{x(0, 59):02d}",
        f"bed {x(1, 30)}", f"bay {x(1, 8)} bed {x(1, 6)}", f"Bay {x(1, 8)}", f"theatre {x(1, 12)}",
        f"to theatre {x(1, 9)} at {x(7, 18):02d}:{R.choice(['00', '15', '30', '45'])}",
        f"bleep {x(1000, 9999)}", f"ext {x(1000, 9999)}", f"x{x(2000, 7999)}", "2222 call",
        "crash call 2222", f"fast bleep {x(1000, 9999)}", f"side room {x(1, 9)}",
        f"resus {x(1, 4)}", f"cubicle {x(1, 20)}", f"Ward {x(1, 40)}",
        f"paracetamol 1g QDS", f"morphine {R.choice(['2.5', '5', '10'])}mg IV",
        f"{x(1, 20) * 5}mg", f"enoxaparin {x(2, 15) * 10} mg SC", "co-amoxiclav 1.2g TDS",
        f"IV fluids 1000ml over {x(4, 12)}h", f"insulin {x(2, 20)} units", "gent 5mg/kg",
        f"BP {x(80, 190)}/{x(40, 110)}", f"HR {x(40, 160)}", f"sats {x(82, 100)}% on {x(1, 15)}L",
        f"RR {x(10, 40)}", f"temp {x(35, 40)}.{x(0, 9)}", f"GCS {x(3, 15)}/15", f"NEWS2 {x(0, 12)}",
        f"BM {x(2, 30)}.{x(0, 9)}", f"Hb {x(60, 160)}", f"K+ {x(2, 7)}.{x(0, 9)}", f"Na {x(120, 150)}",
        f"CRP {x(1, 400)}", f"WCC {x(1, 30)}.{x(0, 9)}", f"lactate {x(0, 9)}.{x(0, 9)}",
        f"trop {x(5, 5000)}", f"eGFR {x(10, 90)}", f"INR {x(1, 5)}.{x(0, 9)}",
        f"pH 7.{x(0, 45):02d}", f"creat {x(50, 600)}", f"plt {x(20, 500)}",
        f"{x(0, 23):02d}:{x(0, 59):02d}", f"at {x(7, 22):02d}{R.choice(['00', '30'])}",
        f"ETA {x(5, 40)} mins", f"by {x(8, 20)}:00",
        f"admitted {x(1, 28):02d}/{x(1, 12):02d}/2024", f"op on {x(1, 28)}rd March",
        f"CT {x(1, 28):02d}.{x(1, 12):02d}.24", f"last seen 2024-{x(1, 12):02d}-{x(1, 28):02d}",
        f"due {x(1, 28):02d}/{x(1, 12):02d}/2025", f"seen in clinic 3 Feb 2023",
        f"Datix ref {invalid_number()}", f"order no {fmt334(invalid_number())}",
        f"ref {invalid_number()}", f"lab accession {fmt334(invalid_number(), 'space')}",
        "ECG 12 lead", "CXR clear", "ST elevation V2-V4", "T2DM", "COVID-19 neg", "A&E",
        "HDU", "FY1 aware", "ST3 reg reviewing", "P1 casualties x3", "triage T1",
        f"ambulance ETA {x(5, 20)} min", "Helimed 58 inbound", "AKI stage 2", "NBM from 02:00",
        "for CT head", "DNACPR in place", "Nightingale Ward", "on-call reg aware",
        f"{x(2, 6)}L O2", "temp 38.5°C", f"fentanyl {x(25, 100)}µg", "obs stable → step down",
        f"GCS 15, BP {x(90, 140)}/{x(50, 90)}", f"Hb {x(70, 130)} → transfuse 1 unit",
        f"age {x(18, 99)}", f"{x(18, 99)}M", f"{x(18, 99)}yo F", "query NOF", "#NOF left",
        f"RTC, {x(2, 5)} casualties", "Dr on call aware", "Sister in charge informed",
        "patient in bay 3", "pt stable", "Mr on-call notified", "ED reg", "ICU outreach",
        f"blood glucose {x(3, 20)} mmol/L", f"{x(1, 4)} units O neg", f"weight {x(40, 140)}kg",
        "CT 14:30 slot", f"room {x(100, 420)}", f"ward extension {x(4000, 4999)}",
        f"{x(1, 3)}x 10mg tablets", f"lot number {x(100000, 999999)}",
    ])


def message(with_pid):
    parts = [neg() for _ in range(R.randint(1, 4))]
    if with_pid:
        for _ in range(1 if R.random() < 0.7 else 2):
            parts.insert(R.randint(0, len(parts)), R.choice(PID)())
    sep = R.choice([", ", ". ", "; ", " - ", ", "])
    text = sep.join(parts)
    return text[0].upper() + text[1:] if text[0].islower() and R.random() < 0.5 else text


# Hand-written messages, phrased differently from the generator on purpose.
HAND = [
    "Pt [[person_name|Harjit Singh]] ([[nhs_number|999 123 4570]]) for CT head, GCS 14",
    "Can someone call [[person_name|Eleanor Wright]]'s daughter back? Number is [[phone|07700 900461]]",
    "Mr [[person_name|AHMED]], MRN [[hospital_number|A7654321]], to theatre 2 at 14:30",
    "Casualty MI-0042: male approx 40, no ID, BP 90/60, HR 125, sats 91%",
    "MI-0043 now identified as [[person_name|Tomasz Nowak]], DOB [[date_of_birth|04/07/1981]]",
    "Bleep 2345 re bed 14, K+ 6.2 on repeat, calcium gluconate given 10ml 10%",
    "Ref 1234567890 on the Datix, please close",
    "d/w Dr [[person_name|Okafor]], plan CTPA, enoxaparin 1.5mg/kg",
    "NOK is her son [[person_name|Callum]] on [[phone|+44 7700 900 812]]",
    "Sats 88% on 15L NRB, ABG pH 7.21 pCO2 8.4, ICU aware, bay 2 bed 5",
    "Transfer letter to [[email|ward7.leeds@example.nhs.uk]] please",
    "Home: [[address|23 Station Road, Wakefield WF1 2AB]]",
    "Born [[date_of_birth|12th June 1947]], lives alone, carers QDS",
    "2222 called 03:12, ROSC 03:25, for cath lab",
    "Trauma call x3 from RTC M62, ETA 15 mins, resus 1 and 2",
    "[[nhs_number|9991234570]] - is this the right patient? the band says [[hospital_number|K445566]] hosp no",
    "Sorry, hosp no is [[hospital_number|R0012345]]",
    "His wife [[person_name|Margaret]] is in the relatives room",
    "Hb 71, plt 45, INR 2.3 - haematology reg bleep 6789",
    "Theatre 4 running late, next case 16:45, anaesthetist ext 3321",
    "Due for review 14/06/2024 in fracture clinic",
    "CHI [[chi_number|0101501236]] transferred from Glasgow",
    "Miss [[person_name|Chloe Evans]] DOB [[date_of_birth|1999-02-17]] [[postcode|LS6 3HN]]",
    "Reference 4325 6789 12 not an NHS number",
    "Gent level due 06:00, vanc 1g BD, tazocin 4.5g TDS",
    "Patient called [[person_name|Kwame Achebe]] in majors cubicle 9",
    "ring me on x4415 or bleep 1122",
    "[[person_name|Nadia]]'s mum is on her way in",
    "Post-op day 2, drain 50ml, obs stable, BP 135/85 HR 78",
    "Call [[phone|0113 496 0321]] for bed manager",
    "Name: [[person_name|Olusegun Adeyemi]], age 67, DOB [[date_of_birth|3/9/56]]",
    "Lab number 2405131235 haemolysed, please repeat U&E",
    "Address [[address|Flat 2, 14 Holly Crescent, Sheffield S10 2HQ]]",
    "Dr [[person_name|Siobhan Campbell]] on call for orthogeriatrics",
    "Pt in Bay 4 Bed 2 for discharge once TTOs ready",
    "ECG: sinus tachy 112, QTc 460, trop 15 -> 48",
    "Patient ID [[hospital_number|7712345]] wristband missing",
    "Glasgow CHI no [[chi_number|2504651239]]",
    "Weight 72.5kg, height 172cm, BMI 24.5",
    "Incident number MI-0107, 6 P1s, 12 P2s, 20 P3s",
]


def parse(markup):
    text, spans = b"", []
    pos = 0
    for mt in re.finditer(r"\[\[([a-z_]+)\|(.*?)\]\]", markup):
        text += markup[pos:mt.start()].encode()
        value = mt.group(2).encode()
        spans.append({"kind": mt.group(1), "start": len(text), "end": len(text) + len(value),
                      "value": mt.group(2)})
        text += value
        pos = mt.end()
    text += markup[pos:].encode()
    return text.decode(), spans


def fix_hand(markup):
    # Keep hand-written NHS/CHI examples valid: recompute the check digit.
    def repl(mt):
        kind, val = mt.group(1), mt.group(2)
        if kind in ("nhs_number", "chi_number"):
            digits = re.sub(r"\D", "", val)
            c = mod11(digits[:9])
            assert c is not None, val
            fixed = digits[:9] + str(c)
            out, i = "", 0
            for ch in val:
                if ch.isdigit():
                    out += fixed[i]
                    i += 1
                else:
                    out += ch
            val = out
        return f"[[{kind}|{val}]]"
    return re.sub(r"\[\[([a-z_]+)\|(.*?)\]\]", repl, markup)


def main():
    rows = [fix_hand(h) for h in HAND]
    for i in range(300):
        rows.append(message(with_pid=i % 5 != 0 and R.random() < 0.7))
    for markup in rows:
        text, spans = parse(markup)
        print(json.dumps({"text": text, "spans": spans}, ensure_ascii=False))


if __name__ == "__main__":
    sys.exit(main())
