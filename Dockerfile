# The official Apify image for Python, matching the Python version the project is tested with.
FROM apify/actor-python:3.11

USER myuser

# Requirements first, so code changes do not reinstall them.
COPY --chown=myuser:myuser requirements.txt ./
RUN echo "Python version:" && python --version \
 && echo "Installing dependencies:" && pip install --no-cache-dir -r requirements.txt \
 && echo "Installed packages:" && pip freeze

COPY --chown=myuser:myuser . ./

# Fail the build early on a syntax error.
RUN python -m compileall -q src/

CMD ["python", "-m", "src"]
