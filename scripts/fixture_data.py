"""Synthetic conversations for lfmq's trained tool-calling fixture (scripts/train_fixture.py): seeded, written for the
project, nothing downloaded.

Three kinds of example, each a list of chat messages plus the tools it offers:
- tool use: tools in the system prompt (LFM2.5's template renders them as `List of tools: [...]`), a user request in
  one of many phrasings, the assistant's `<|tool_call_start|>[name(arg=...)]<|tool_call_end|>` with arguments taken
  from the request, often followed by the tool's result and a short answer that quotes it;
- extraction: lfmq.extract's own system prompt with a JSON schema, a text, and the JSON answer;
- small talk without a call.

`task_case` turns an example into a line of an `lfmq eval --task` file: the messages up to the first assistant turn
and the expected calls or object."""

from __future__ import annotations

import json
import random
from typing import Any, Callable

from lfmq.runtime.extract import SYSTEM as EXTRACT_SYSTEM
from lfmq.runtime.tools import CALL_END, CALL_START, format_calls

Example = dict[str, Any]  # {"messages": [...], "tools": [...] | None, "schema": {...} | None, "expected": ...}

CITIES = ["Paris", "London", "Berlin", "Madrid", "Rome", "Lisbon", "Vienna", "Prague", "Warsaw", "Dublin", "Oslo",
          "Stockholm", "Helsinki", "Athens", "Cairo", "Nairobi", "Lagos", "Tokyo", "Osaka", "Seoul", "Beijing",
          "Shanghai", "Mumbai", "Delhi", "Bangkok", "Jakarta", "Manila", "Sydney", "Melbourne", "Auckland",
          "Toronto", "Vancouver", "Chicago", "Boston", "Denver", "Seattle", "Miami", "Houston", "Phoenix", "Dallas",
          "Atlanta", "Montreal", "Lima", "Bogota", "Santiago", "Quito", "Havana", "Zurich", "Geneva", "Munich",
          "Hamburg", "Milan", "Naples", "Porto", "Seville", "Valencia", "Lyon", "Marseille", "Brussels", "Amsterdam",
          "New York", "Los Angeles", "San Francisco", "Buenos Aires", "Rio de Janeiro", "Mexico City", "Cape Town",
          "Hong Kong", "Kuala Lumpur", "Tel Aviv"]
UNITS_T = ["celsius", "fahrenheit"]
CURRENCIES = {"USD": ["dollars", "US dollars", "USD"], "EUR": ["euros", "EUR"], "GBP": ["pounds", "British pounds", "GBP"],
              "JPY": ["yen", "Japanese yen", "JPY"], "CHF": ["Swiss francs", "CHF"], "CNY": ["yuan", "CNY"],
              "INR": ["rupees", "Indian rupees", "INR"], "MXN": ["pesos", "Mexican pesos", "MXN"],
              "CAD": ["Canadian dollars", "CAD"], "AUD": ["Australian dollars", "AUD"], "SEK": ["Swedish kronor", "SEK"],
              "KRW": ["won", "Korean won", "KRW"]}
EVENTS = ["dentist appointment", "team meeting", "lunch with Sara", "yoga class", "doctor visit", "project review",
          "coffee with Tom", "birthday party", "book club", "piano lesson", "job interview", "gym session",
          "dinner with my parents", "haircut", "parent teacher meeting", "flight to Berlin", "budget review",
          "sprint planning", "call with the bank", "car service", "tennis match", "movie night", "study group",
          "weekly sync", "vet appointment", "guitar practice", "board meeting", "date night", "farmers market",
          "code review"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
TOPICS_VERB = ["cook", "fix", "clean", "learn", "grow", "paint", "build", "train for", "choose", "repair", "plan",
               "start"]
TOPICS_OBJ = ["rice", "a bike tire", "a leather sofa", "Spanish", "tomatoes", "a bedroom wall", "a bookshelf",
              "a marathon", "a laptop", "a leaking tap", "a trip to Japan", "a vegetable garden", "sourdough bread",
              "a small business", "a podcast", "chess openings", "a fish tank", "a compost bin"]
TOPICS = ["best pizza in Naples", "history of the Eiffel Tower", "python list comprehension", "cheap flights to Rome",
          "electric cars range", "how volcanoes form", "latest football scores", "healthy breakfast ideas",
          "solar panel prices", "rust borrow checker", "jazz festivals in July", "how to sleep better",
          "black hole images", "museum opening hours", "used cars under 5000", "vegan lasagna recipe",
          "symptoms of the flu", "quantum computing basics", "train times to Lyon", "noise cancelling headphones"]
LENGTH_UNITS = ["miles", "kilometers", "feet", "meters", "inches", "centimeters", "yards"]
MASS_UNITS = ["pounds", "kilograms", "ounces", "grams"]
VOLUME_UNITS = ["liters", "gallons", "cups", "milliliters"]
STOCKS = {"AAPL": "Apple", "MSFT": "Microsoft", "GOOGL": "Google", "AMZN": "Amazon", "TSLA": "Tesla", "NVDA": "Nvidia",
          "META": "Meta", "NFLX": "Netflix", "INTC": "Intel", "IBM": "IBM", "ORCL": "Oracle", "SAP": "SAP",
          "NKE": "Nike", "DIS": "Disney", "KO": "Coca-Cola", "PEP": "Pepsi"}
TIMER_LABELS = ["the pasta", "the laundry", "the oven", "a break", "stretching", "the tea", "the meeting",
                "the bus", "homework", "the eggs", "the bread", "a call"]
FIRST = ["Maria", "John", "Aisha", "Wei", "Carlos", "Emma", "Liam", "Sofia", "Noah", "Olivia", "Yuki", "Omar",
         "Elena", "Lucas", "Priya", "David", "Fatima", "Hugo", "Ines", "Jonas", "Kofi", "Lena", "Mateo", "Nadia",
         "Oscar", "Paula", "Ravi", "Sara", "Tom", "Ana", "Ben", "Clara", "Diego", "Eva", "Felix", "Greta"]
LAST = ["Lopez", "Smith", "Khan", "Chen", "Garcia", "Brown", "Muller", "Rossi", "Kim", "Silva", "Tanaka", "Haddad",
        "Novak", "Dubois", "Patel", "Cohen", "Mensah", "Larsen", "Costa", "Weber", "Ivanova", "Nguyen", "Jensen",
        "Moreau", "Schmidt", "Okafor", "Santos", "Berg", "Fischer", "Romero"]
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries", "Wayne Enterprises", "Vandelay",
             "Soylent", "Cyberdyne", "Tyrell", "Aperture", "Massive Dynamic", "Oscorp", "Wonka"]
PRODUCTS = ["notebooks", "pencils", "coffee mugs", "t-shirts", "headphones", "chairs", "lamps", "water bottles",
            "backpacks", "keyboards", "umbrellas", "candles", "plates", "towels", "batteries", "phone cases"]

# the tools, in the flat form of Liquid's examples: {"name", "description", "parameters"}
TOOLS: dict[str, dict[str, Any]] = {t["name"]: t for t in [
    {"name": "get_weather", "description": "Get the current weather for a city.",
     "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                      "unit": {"type": "string", "enum": UNITS_T}},
                    "required": ["location"]}},
    {"name": "convert_currency", "description": "Convert an amount of money between currencies.",
     "parameters": {"type": "object", "properties": {"amount": {"type": "number"}, "from_currency": {"type": "string"},
                                                      "to_currency": {"type": "string"}},
                    "required": ["amount", "from_currency", "to_currency"]}},
    {"name": "create_event", "description": "Add an event to the calendar.",
     "parameters": {"type": "object", "properties": {"title": {"type": "string"}, "date": {"type": "string"},
                                                      "time": {"type": "string"}},
                    "required": ["title", "date"]}},
    {"name": "web_search", "description": "Search the web.",
     "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "max_results": {"type": "integer"}},
                    "required": ["query"]}},
    {"name": "convert_units", "description": "Convert a value between units.",
     "parameters": {"type": "object", "properties": {"value": {"type": "number"}, "from_unit": {"type": "string"},
                                                      "to_unit": {"type": "string"}},
                    "required": ["value", "from_unit", "to_unit"]}},
    {"name": "get_stock_price", "description": "Get the latest price of a stock.",
     "parameters": {"type": "object", "properties": {"symbol": {"type": "string"}}, "required": ["symbol"]}},
    {"name": "set_timer", "description": "Start a countdown timer.",
     "parameters": {"type": "object", "properties": {"minutes": {"type": "integer"}, "label": {"type": "string"}},
                    "required": ["minutes"]}},
]}

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                                "city": {"type": "string"}},
               "required": ["name", "age", "city"]},
    "order": {"type": "object", "properties": {"product": {"type": "string"}, "quantity": {"type": "integer"},
                                               "price": {"type": "number"}},
              "required": ["product", "quantity", "price"]},
    "contact": {"type": "object", "properties": {"name": {"type": "string"}, "email": {"type": "string"},
                                                 "company": {"type": "string"}},
                "required": ["name", "email", "company"]},
    "flight": {"type": "object", "properties": {"origin": {"type": "string"}, "destination": {"type": "string"},
                                                "date": {"type": "string"}},
               "required": ["origin", "destination", "date"]},
}

Request = tuple[str, str, dict[str, Any], str]  # (user text, tool name, arguments, answer once the result is in)


def _date(r: random.Random) -> str:
    kind = r.random()
    if kind < 0.5:
        return f"{r.choice(MONTHS)} {r.randint(1, 28)}"
    if kind < 0.8:
        return r.choice(["next ", "this ", ""]) + r.choice(WEEKDAYS)
    return r.choice(["tomorrow", "today"])


def _time(r: random.Random) -> str:
    if r.random() < 0.5:
        return f"{r.randint(1, 12)}{r.choice(['am', 'pm'])}"
    return f"{r.randint(7, 21)}:{r.choice(['00', '15', '30', '45'])}"


def _weather(r: random.Random) -> Request:
    city = r.choice(CITIES)
    args: dict[str, Any] = {"location": city}
    if r.random() < 0.35:
        unit = r.choice(UNITS_T)
        args["unit"] = unit
        text = r.choice([f"What's the weather in {city} in {unit}?", f"Weather for {city}, in {unit} please.",
                         f"Tell me the temperature in {city} in {unit}.", f"How warm is it in {city}? Use {unit}.",
                         f"Give me the {city} forecast in {unit}."])
    else:
        text = r.choice([f"What's the weather in {city}?", f"How is the weather in {city} today?",
                         f"Is it raining in {city}?", f"Tell me the weather for {city}.", f"weather {city}",
                         f"Can you check the forecast for {city}?", f"I'm going to {city}, what's the weather like there?",
                         f"Do I need an umbrella in {city} today?", f"How cold is it in {city} right now?"])
    temp, cond = r.randint(-5, 35), r.choice(["sunny", "cloudy", "rainy", "windy", "foggy", "snowy"])
    result = {"temperature": temp, "condition": cond}
    return text, "get_weather", args, json.dumps(result) + "\x00" + f"It is {temp} degrees and {cond} in {city}."


def _currency(r: random.Random) -> Request:
    src, dst = r.sample(sorted(CURRENCIES), 2)
    amount = r.randint(2, 999) if r.random() < 0.8 else r.choice([1000, 1500, 2000, 5000])
    a, b = r.choice(CURRENCIES[src]), r.choice(CURRENCIES[dst])
    text = r.choice([f"Convert {amount} {a} to {b}.", f"How much is {amount} {a} in {b}?",
                     f"What is {amount} {a} in {b}?", f"I have {amount} {a}, how many {b} is that?",
                     f"{amount} {a} to {b} please", f"Exchange {amount} {a} into {b}."])
    value = round(amount * r.uniform(0.2, 3.0), 2)
    args = {"amount": amount, "from_currency": src, "to_currency": dst}
    return text, "convert_currency", args, json.dumps({"result": value}) + "\x00" + f"{amount} {src} is {value} {dst}."


def _event(r: random.Random) -> Request:
    title, date = r.choice(EVENTS), _date(r)
    args: dict[str, Any] = {"title": title, "date": date}
    if r.random() < 0.6:
        time = _time(r)
        args["time"] = time
        text = r.choice([f"Schedule {title} on {date} at {time}.", f"Add {title} to my calendar for {date} at {time}.",
                         f"Create an event called {title} on {date} at {time}.", f"Book {title} for {date}, {time}.",
                         f"Put {title} in my calendar {date} at {time}."])
    else:
        text = r.choice([f"Schedule {title} on {date}.", f"Add {title} to my calendar for {date}.",
                         f"Create an event called {title} on {date}.", f"Remember {title} {date}."])
    return text, "create_event", args, json.dumps({"status": "created"}) + "\x00" + f"Done: {title} is in your calendar."


def _search(r: random.Random) -> Request:
    query = r.choice(TOPICS) if r.random() < 0.5 else f"how to {r.choice(TOPICS_VERB)} {r.choice(TOPICS_OBJ)}"
    args: dict[str, Any] = {"query": query}
    if r.random() < 0.25:
        n = r.randint(2, 10)
        args["max_results"] = n
        text = r.choice([f"Search the web for {query}, top {n} results.", f"Find {n} results about {query}.",
                         f"Look up {query} and give me {n} results."])
    else:
        text = r.choice([f"Search the web for {query}.", f"Look up {query}.", f"Find information about {query}.",
                         f"Can you google {query}?", f"search: {query}", f"I want to know about {query}."])
    return text, "web_search", args, json.dumps({"results": 3}) + "\x00" + f"I found some pages about {query}."


def _units(r: random.Random) -> Request:
    group = r.choice([LENGTH_UNITS, MASS_UNITS, VOLUME_UNITS])
    src, dst = r.sample(group, 2)
    value = r.randint(1, 500)
    text = r.choice([f"Convert {value} {src} to {dst}.", f"How many {dst} are in {value} {src}?",
                     f"What is {value} {src} in {dst}?", f"{value} {src} in {dst}?", f"Change {value} {src} into {dst}."])
    out = round(value * r.uniform(0.1, 5.0), 2)
    args = {"value": value, "from_unit": src, "to_unit": dst}
    return text, "convert_units", args, json.dumps({"result": out}) + "\x00" + f"{value} {src} is {out} {dst}."


def _stock(r: random.Random) -> Request:
    symbol = r.choice(sorted(STOCKS))
    name = STOCKS[symbol] if r.random() < 0.6 else symbol
    text = r.choice([f"What's the stock price of {name}?", f"How is {name} trading today?", f"{name} share price",
                     f"Check the price of {name} stock.", f"How much is one {name} share?"])
    price = round(r.uniform(10, 900), 2)
    return text, "get_stock_price", {"symbol": symbol}, json.dumps({"price": price}) + "\x00" + f"{symbol} is at {price}."


def _timer(r: random.Random) -> Request:
    minutes = r.randint(1, 90)
    args: dict[str, Any] = {"minutes": minutes}
    if r.random() < 0.5:
        label = r.choice(TIMER_LABELS)
        args["label"] = label
        text = r.choice([f"Set a timer for {minutes} minutes for {label}.", f"Start a {minutes} minute timer for {label}.",
                         f"Timer {minutes} minutes, {label}.", f"Remind me about {label} in {minutes} minutes."])
    else:
        text = r.choice([f"Set a timer for {minutes} minutes.", f"Start a {minutes} minute timer.",
                         f"Countdown of {minutes} minutes please.", f"timer {minutes} min"])
    return text, "set_timer", args, json.dumps({"status": "started"}) + "\x00" + f"Timer set for {minutes} minutes."


REQUESTS: dict[str, Callable[[random.Random], Request]] = {
    "get_weather": _weather, "convert_currency": _currency, "create_event": _event, "web_search": _search,
    "convert_units": _units, "get_stock_price": _stock, "set_timer": _timer,
}


def _offer(r: random.Random, needed: list[str]) -> list[dict[str, Any]]:
    """The tools the system prompt lists: the needed ones and up to two others, shuffled."""
    others = [n for n in TOOLS if n not in needed]
    names = needed + r.sample(others, r.randint(0 if needed else 1, 2))
    r.shuffle(names)
    return [TOOLS[n] for n in names]


def _system(r: random.Random) -> list[dict[str, Any]]:
    prompt = r.choice(["", "", "You are a helpful assistant.", "You are a helpful assistant with access to tools.",
                       "Use the tools when they help."])
    return [{"role": "system", "content": prompt}] if prompt else []


def tool_example(r: random.Random) -> Example:
    first = r.choice(sorted(REQUESTS))
    requests = [REQUESTS[first](r)]
    if r.random() < 0.12:  # two requests in one message: parallel calls
        requests.append(REQUESTS[r.choice(sorted(REQUESTS))](r))
    text = requests[0][0] if len(requests) == 1 else r.choice([" And ", " Also, ", " Then "]).join(
        [requests[0][0], requests[1][0][0].lower() + requests[1][0][1:]])
    calls = [{"name": name, "arguments": args} for _, name, args, _ in requests]
    tools = _offer(r, sorted({c["name"] for c in calls}))
    messages = _system(r) + [{"role": "user", "content": text},
                             {"role": "assistant", "content": CALL_START + format_calls(calls) + CALL_END}]
    if r.random() < 0.4:
        results = [answer.split("\x00") for *_, answer in requests]
        content = results[0][0] if len(results) == 1 else "[" + ", ".join(res for res, _ in results) + "]"
        messages += [{"role": "tool", "content": content},
                     {"role": "assistant", "content": " ".join(ans for _, ans in results)}]
    return {"messages": messages, "tools": tools, "schema": None, "expected": calls}


def _extraction_text(r: random.Random, kind: str) -> tuple[str, dict[str, Any]]:
    name = f"{r.choice(FIRST)} {r.choice(LAST)}"
    if kind == "person":
        age, city = r.randint(18, 90), r.choice(CITIES)
        text = r.choice([f"{name} is {age} years old and lives in {city}.", f"Meet {name}, {age}, from {city}.",
                         f"{name} ({age}) moved to {city} last year.", f"My neighbor {name} lives in {city} and just turned {age}.",
                         f"Name: {name}. Age: {age}. Home: {city}."])
        return text, {"name": name, "age": age, "city": city}
    if kind == "order":
        product, qty = r.choice(PRODUCTS), r.randint(1, 200)
        price = r.choice([float(r.randint(1, 300)), round(r.uniform(1, 300), 2)])
        text = r.choice([f"I'd like to order {qty} {product} at {price} dollars each.",
                         f"Please send {qty} {product}, unit price {price}.",
                         f"Order: {product}, quantity {qty}, price {price}.",
                         f"We need {qty} more {product}; they cost {price} each."])
        return text, {"product": product, "quantity": qty, "price": price}
    if kind == "contact":
        company = r.choice(COMPANIES)
        email = f"{name.split()[0].lower()}.{name.split()[1].lower()}@{company.split()[0].lower()}.com"
        text = r.choice([f"{name} works at {company}, reach her at {email}.", f"Contact {name} ({company}): {email}",
                         f"You can email {name} from {company} at {email}.",
                         f"{name}, {company}, {email}"])
        return text, {"name": name, "email": email, "company": company}
    origin, destination = r.sample(CITIES, 2)
    date = _date(r)
    text = r.choice([f"Book a flight from {origin} to {destination} on {date}.",
                     f"I need to fly {origin} to {destination}, leaving {date}.",
                     f"Flight request: {origin} -> {destination}, {date}.",
                     f"{name} travels from {origin} to {destination} on {date}."])
    return text, {"origin": origin, "destination": destination, "date": date}


def extraction_example(r: random.Random) -> Example:
    kind = r.choice(sorted(SCHEMAS))
    schema = SCHEMAS[kind]
    text, obj = _extraction_text(r, kind)
    system = EXTRACT_SYSTEM.replace("{schema}", json.dumps(schema, ensure_ascii=False))
    messages = [{"role": "system", "content": system}, {"role": "user", "content": text},
                {"role": "assistant", "content": json.dumps(obj, ensure_ascii=False)}]
    return {"messages": messages, "tools": None, "schema": schema, "expected": obj}


def chat_example(r: random.Random) -> Example:
    pairs = [("Hi!", "Hello! How can I help you today?"), ("Thanks!", "You're welcome."),
             ("Who are you?", "I am a small assistant that can call tools."), ("Good morning", "Good morning! What can I do for you?"),
             ("Can you help me?", "Of course. What do you need?"), ("Bye", "Goodbye!")]
    user, answer = r.choice(pairs)
    tools = _offer(r, []) if r.random() < 0.7 else None
    return {"messages": _system(r) + [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
            "tools": tools, "schema": None, "expected": []}


def example(r: random.Random) -> Example:
    x = r.random()
    return tool_example(r) if x < 0.7 else extraction_example(r) if x < 0.95 else chat_example(r)


def examples(seed: int, n: int) -> list[Example]:
    r = random.Random(seed)
    return [example(r) for _ in range(n)]


def task_case(ex: Example) -> dict[str, Any]:
    """A line of an `lfmq eval --task` file: the prompt (messages before the first assistant turn) and the answer.
    Extraction cases leave out the system prompt: lfmq.extract writes it from the schema."""
    first = next(i for i, m in enumerate(ex["messages"]) if m["role"] == "assistant")
    messages = ex["messages"][:first]
    if ex["schema"] is not None:
        return {"messages": [m for m in messages if m["role"] != "system"], "schema": ex["schema"],
                "expected": ex["expected"]}
    return {"messages": messages, "tools": ex["tools"], "expected": ex["expected"]}


def task_cases(seed: int, n: int) -> list[dict[str, Any]]:
    """n held-out task cases (tool calls and extraction; small talk is left out) from their own seed."""
    r = random.Random(seed)
    out: list[dict[str, Any]] = []
    while len(out) < n:
        ex = tool_example(r) if r.random() < 0.75 else extraction_example(r)
        out.append(task_case(ex))
    return out
