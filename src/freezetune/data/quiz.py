"""The built-in multiple-choice task (`--retain-tasks builtin`): general knowledge and arithmetic,
four choices each, written for this project and free to use. It exists so that task-based
forgetting can be measured with no download: the items are generated here, written as JSON lines,
and scored by lm-evaluation-harness like any local task. The right choice's positions are a seeded
shuffle of an even split, so the answer key is balanced and the file is the same every time.
"""

from __future__ import annotations

import random

# question | right answer | three wrong answers
KNOWLEDGE = """\
What is the capital of France? | Paris | Lyon | Marseille | Nice
What is the capital of Japan? | Tokyo | Osaka | Kyoto | Nagoya
What is the capital of Italy? | Rome | Milan | Naples | Turin
What is the capital of Germany? | Berlin | Munich | Hamburg | Frankfurt
What is the capital of Spain? | Madrid | Barcelona | Seville | Valencia
What is the capital of Canada? | Ottawa | Toronto | Vancouver | Montreal
What is the capital of Australia? | Canberra | Sydney | Melbourne | Perth
What is the capital of Egypt? | Cairo | Alexandria | Luxor | Giza
What is the capital of Kenya? | Nairobi | Mombasa | Kisumu | Nakuru
What is the capital of Brazil? | Brasilia | Rio de Janeiro | Sao Paulo | Salvador
What is the capital of Russia? | Moscow | Saint Petersburg | Kazan | Novosibirsk
What is the capital of India? | New Delhi | Mumbai | Kolkata | Chennai
What is the capital of China? | Beijing | Shanghai | Shenzhen | Guangzhou
What is the capital of the United Kingdom? | London | Manchester | Edinburgh | Liverpool
What is the capital of Norway? | Oslo | Bergen | Stockholm | Helsinki
What is the capital of Greece? | Athens | Sparta | Thessaloniki | Corinth
What is the capital of Portugal? | Lisbon | Porto | Madrid | Faro
What is the capital of Argentina? | Buenos Aires | Cordoba | Rosario | Mendoza
What is the capital of Mexico? | Mexico City | Guadalajara | Cancun | Monterrey
What is the capital of Turkey? | Ankara | Istanbul | Izmir | Antalya
Which planet is closest to the Sun? | Mercury | Venus | Earth | Mars
Which planet is known as the Red Planet? | Mars | Jupiter | Venus | Saturn
Which is the largest planet in the solar system? | Jupiter | Saturn | Neptune | Earth
Which planet has the most famous rings? | Saturn | Mars | Mercury | Venus
What does the Moon orbit? | The Earth | The Sun | Mars | Jupiter
What star is at the center of our solar system? | The Sun | Sirius | Polaris | Vega
What gas do plants take in from the air to make food? | Carbon dioxide | Oxygen | Helium | Nitrogen
What gas do humans need to breathe to live? | Oxygen | Carbon dioxide | Hydrogen | Neon
What is the chemical symbol for water? | H2O | CO2 | NaCl | O2
What is the chemical symbol for gold? | Au | Ag | Gd | Go
What is the chemical symbol for iron? | Fe | Ir | In | Fr
What is the freezing point of water in degrees Celsius? | 0 | 10 | 32 | 100
What is the boiling point of water in degrees Celsius at sea level? | 100 | 50 | 90 | 212
How many legs does a spider have? | Eight | Six | Ten | Four
How many legs does an insect have? | Six | Eight | Four | Ten
What is the largest mammal on Earth? | The blue whale | The elephant | The giraffe | The hippo
What is the fastest land animal? | The cheetah | The horse | The lion | The rabbit
Which animal is known for its black and white stripes? | The zebra | The tiger | The panda | The horse
Which bird is a symbol of peace? | The dove | The eagle | The crow | The hawk
What do bees make? | Honey | Milk | Silk | Wax paper
What organ pumps blood through the body? | The heart | The liver | The lungs | The brain
Which organ do humans use to breathe? | The lungs | The stomach | The heart | The kidneys
How many days are in a week? | Seven | Five | Six | Ten
How many months are in a year? | Twelve | Ten | Eleven | Thirteen
How many hours are in a day? | 24 | 12 | 20 | 48
How many minutes are in an hour? | 60 | 30 | 100 | 90
How many days are in a leap year? | 366 | 365 | 364 | 360
Which month comes after March? | April | May | February | June
Which season comes after winter? | Spring | Summer | Autumn | Winter again
What color do you get by mixing blue and yellow? | Green | Purple | Orange | Brown
What color do you get by mixing red and white? | Pink | Grey | Purple | Orange
What color is a ripe banana? | Yellow | Blue | Purple | Black
What color is the sky on a clear day? | Blue | Green | Red | Brown
Which ocean is the largest? | The Pacific Ocean | The Atlantic Ocean | The Indian Ocean | The Arctic Ocean
What is the longest river in Africa? | The Nile | The Congo | The Niger | The Zambezi
What is the tallest mountain in the world? | Mount Everest | Kilimanjaro | Mont Blanc | Mount Fuji
On which continent is Egypt? | Africa | Asia | Europe | South America
On which continent is Brazil? | South America | Africa | North America | Europe
Which continent is the coldest? | Antarctica | Europe | Asia | Africa
Which desert is the largest hot desert? | The Sahara | The Gobi | The Kalahari | The Mojave
Who wrote Romeo and Juliet? | William Shakespeare | Charles Dickens | Jane Austen | Mark Twain
Who painted the Mona Lisa? | Leonardo da Vinci | Pablo Picasso | Vincent van Gogh | Claude Monet
Who developed the theory of relativity? | Albert Einstein | Isaac Newton | Charles Darwin | Marie Curie
Who proposed evolution by natural selection? | Charles Darwin | Albert Einstein | Isaac Newton | Galileo Galilei
Who was the first person to walk on the Moon? | Neil Armstrong | Yuri Gagarin | Buzz Aldrin | John Glenn
Which instrument has black and white keys? | The piano | The violin | The drum | The flute
How many strings does a standard guitar have? | Six | Four | Five | Twelve
What is the main language spoken in Brazil? | Portuguese | Spanish | French | English
What is the main language spoken in Mexico? | Spanish | Portuguese | English | Italian
What currency is used in Japan? | The yen | The won | The yuan | The dollar
What is frozen water called? | Ice | Steam | Fog | Dew
What do caterpillars turn into? | Butterflies | Spiders | Beetles | Bees
What is the young of a dog called? | A puppy | A kitten | A calf | A foal
What is the young of a cat called? | A kitten | A puppy | A cub | A lamb
What do cows drink most of? | Water | Milk | Juice | Oil
Which food is made from milk? | Cheese | Bread | Rice | Pasta
What is the main ingredient of bread? | Flour | Sugar | Salt | Butter
Which fruit is dried to make raisins? | Grapes | Plums | Apples | Cherries
What shape has three sides? | A triangle | A square | A circle | A pentagon
What shape has four equal sides and four right angles? | A square | A triangle | A circle | An oval
How many sides does a hexagon have? | Six | Five | Seven | Eight
How many degrees are in a right angle? | 90 | 45 | 180 | 360
How many degrees are in a full circle? | 360 | 180 | 90 | 100
What is the opposite of hot? | Cold | Warm | Wet | Dry
What is the opposite of up? | Down | Left | Over | High
What is the plural of mouse? | Mice | Mouses | Meese | Mousen
What is the past tense of go? | Went | Goed | Gone | Going
Which word is a verb? | Run | Blue | Table | Quickly
Which word is an adjective? | Happy | Jump | Slowly | House
What do we call a word that means the same as another word? | A synonym | An antonym | A verb | A noun
What device is used to tell the time? | A clock | A compass | A thermometer | A scale
What device measures temperature? | A thermometer | A clock | A ruler | A barometer
What device shows which way is north? | A compass | A telescope | A microscope | A thermometer
What do you use to see very small things? | A microscope | A telescope | A periscope | A mirror
Which sense do you use with your ears? | Hearing | Sight | Taste | Smell
How many continents are there? | Seven | Five | Six | Eight
What is the largest country by area? | Russia | Canada | China | Brazil
Which is the smallest prime number? | 2 | 1 | 3 | 0
What is the square root of 81? | 9 | 8 | 7 | 18
What is the square root of 144? | 12 | 14 | 11 | 72
How many centimeters are in a meter? | 100 | 10 | 1000 | 60
How many grams are in a kilogram? | 1000 | 100 | 10 | 60
"""


def _arithmetic(rng: random.Random) -> tuple[str, int, list[int]]:
    """One sum, difference or product with three near-miss distractors (off by small amounts)."""
    kind = rng.choice("+-*")
    if kind == "*":
        a, b = rng.randint(2, 12), rng.randint(2, 12)
        right = a * b
    else:
        a, b = rng.randint(10, 99), rng.randint(2, 60)
        a, b = max(a, b), min(a, b)  # a difference stays positive, so every distractor can be too
        right = a + b if kind == "+" else a - b
    misses: list[int] = []
    while len(misses) < 3:
        wrong = right + rng.choice([-10, -2, -1, 1, 2, 10, a, -b])
        if wrong != right and wrong not in misses and wrong >= 0:
            misses.append(wrong)
    return f"What is {a} {'x' if kind == '*' else kind} {b}?", right, misses


def quiz_items(arithmetic: int = 120, seed: int = 1234) -> list[dict]:
    """Every item as {"id", "question", "choices", "answer"} (the index of the right choice):
    the general-knowledge questions above, then ``arithmetic`` generated ones."""
    rng = random.Random(seed)
    rows = []
    for line in KNOWLEDGE.strip().splitlines():
        question, right, *wrong = (part.strip() for part in line.split("|"))
        rows.append((question, right, wrong))
    for _ in range(arithmetic):
        question, right, wrong = _arithmetic(rng)
        rows.append((question, str(right), [str(w) for w in wrong]))
    # each position holds the right answer equally often: always picking one letter scores 25%
    positions = [index % 4 for index in range(len(rows))]
    rng.shuffle(positions)
    items = []
    for index, ((question, right, wrong), position) in enumerate(zip(rows, positions)):
        choices = wrong[:position] + [right] + wrong[position:]
        items.append({"id": index, "question": question, "choices": choices, "answer": position})
    return items
